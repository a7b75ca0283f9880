// OpenTelemetry instruments made from the metric catalogue (metric-names.ts): the name picks the
// entry, and its help text, unit and buckets come from there, so they are written once. A name
// outside the catalogue, or of another type, does not compile.
import type {
  Counter,
  Histogram,
  Meter,
  MetricOptions,
  ObservableCounter,
  ObservableGauge,
} from "@opentelemetry/api";
import { METRICS, type MetricName, type MetricSpec } from "./metric-names.js";

/** The catalogue's names of metrics of one type. */
type NameOf<T extends MetricSpec["type"]> = {
  [K in MetricName]: (typeof METRICS)[K]["type"] extends T ? K : never;
}[MetricName];

/** Names of the catalogue's counters. */
export type CounterName = NameOf<"counter">;
/** Names of the catalogue's gauges. */
export type GaugeName = NameOf<"gauge">;
/** Names of the catalogue's histograms. */
export type HistogramName = NameOf<"histogram">;

/** The instrument options of a catalogue entry: description, unit and bucket boundaries. */
function instrumentOptions(name: MetricName): MetricOptions {
  const spec: MetricSpec = METRICS[name];
  return {
    description: spec.help,
    ...(spec.unit === undefined ? {} : { unit: spec.unit }),
    ...(spec.buckets === undefined ? {} : { advice: { explicitBucketBoundaries: [...spec.buckets] } }),
  };
}

/** A counter of the catalogue. */
export function counter(meter: Meter, name: CounterName): Counter {
  return meter.createCounter(name, instrumentOptions(name));
}

/** A counter of the catalogue whose total is read at scrape time. */
export function observableCounter(meter: Meter, name: CounterName): ObservableCounter {
  return meter.createObservableCounter(name, instrumentOptions(name));
}

/** A gauge of the catalogue, read at scrape time. */
export function observableGauge(meter: Meter, name: GaugeName): ObservableGauge {
  return meter.createObservableGauge(name, instrumentOptions(name));
}

/** A histogram of the catalogue, with its bucket boundaries. */
export function histogram(meter: Meter, name: HistogramName): Histogram {
  return meter.createHistogram(name, instrumentOptions(name));
}
