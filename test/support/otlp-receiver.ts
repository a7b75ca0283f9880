// An OTLP/HTTP receiver for traces in JSON (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json):
// collects every span the services export.
import { bufferingServer, listenOnLoopback } from "./http-server.js";

/** A span as exported, flattened with its service name. */
export interface ExportedSpan {
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  kind: number;
  attributes: Record<string, unknown>;
  links: { traceId: string; spanId: string }[];
}

/** An attribute value in OTLP/JSON (only the kinds the services set). */
interface OtlpValue {
  stringValue?: string;
  intValue?: string | number;
  boolValue?: boolean;
  doubleValue?: number;
}
type OtlpAttributes = { key: string; value: OtlpValue }[];

/** The part of an OTLP/JSON ExportTraceServiceRequest the tests read. */
interface OtlpTraces {
  resourceSpans?: {
    resource?: { attributes?: OtlpAttributes };
    scopeSpans?: {
      spans?: {
        traceId: string;
        spanId: string;
        parentSpanId?: string;
        name: string;
        kind: number;
        attributes?: OtlpAttributes;
        links?: { traceId: string; spanId: string }[];
      }[];
    }[];
  }[];
}

const attributeValue = (v: OtlpValue) =>
  v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : (v.boolValue ?? v.doubleValue));
const attrs = (list: OtlpAttributes = []) =>
  Object.fromEntries(list.map((a) => [a.key, attributeValue(a.value)]));

/** Starts the receiver; `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT should be. */
export async function startOtlpReceiver(): Promise<
  { endpoint: string; spans: ExportedSpan[] } & AsyncDisposable
> {
  const spans: ExportedSpan[] = [];
  const server = bufferingServer((req, raw, res) => {
    if (req.url !== "/v1/traces") {
      res.statusCode = 404;
      res.end();
      return;
    }
    const body = JSON.parse(raw.toString("utf8")) as OtlpTraces;
    for (const rs of body.resourceSpans ?? []) {
      const service = String(attrs(rs.resource?.attributes)["service.name"]);
      for (const ss of rs.scopeSpans ?? []) {
        for (const s of ss.spans ?? []) {
          spans.push({
            service,
            traceId: s.traceId,
            spanId: s.spanId,
            parentSpanId: s.parentSpanId ?? "",
            name: s.name,
            kind: s.kind,
            attributes: attrs(s.attributes),
            links: (s.links ?? []).map((l) => ({ traceId: l.traceId, spanId: l.spanId })),
          });
        }
      }
    }
    res.setHeader("content-type", "application/json");
    res.end("{}");
  });
  const { port, close } = await listenOnLoopback(server);
  return { endpoint: `http://127.0.0.1:${port}`, spans, [Symbol.asyncDispose]: close };
}
