/** Version of the services, reported in traces, GetStatus and membership heartbeats. */
export const SERVICE_VERSION = "0.1.0";
