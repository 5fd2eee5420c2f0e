import {
  context,
  propagation,
  SpanKind,
  SpanStatusCode,
  trace,
  type Span,
  type TextMapGetter,
} from "@opentelemetry/api";

/**
 * OpenTelemetry tracing, off unless the standard OTEL_* variables ask for it. When off, the
 * SDK is never even loaded and the API's no-op tracer costs a function call per span.
 */
export async function startTracing(
  env: Record<string, string | undefined>,
): Promise<(() => Promise<void>) | undefined> {
  if (env.OTEL_SDK_DISABLED === "true") return undefined;
  const wanted =
    env.OTEL_TRACES_EXPORTER === "otlp" ||
    env.OTEL_EXPORTER_OTLP_ENDPOINT !== undefined ||
    env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT !== undefined;
  if (!wanted || env.OTEL_TRACES_EXPORTER === "none") return undefined;
  const { NodeTracerProvider, BatchSpanProcessor } = await import("@opentelemetry/sdk-trace-node");
  const { OTLPTraceExporter } = await import("@opentelemetry/exporter-trace-otlp-http");
  // @opentelemetry/resources comes with sdk-trace-node (same pinned version). The tracer
  // provider alone does not read OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (only sdk-node
  // does), so without this every span would come from "unknown_service:node".
  const { defaultResource, detectResources, envDetector, resourceFromAttributes } =
    await import("@opentelemetry/resources");
  const resource = defaultResource()
    .merge(resourceFromAttributes({ "service.name": "keygate" }))
    .merge(detectResources({ detectors: [envDetector] }));
  // The exporter reads OTEL_EXPORTER_OTLP_* itself.
  const provider = new NodeTracerProvider({
    resource,
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
  });
  provider.register();
  return () => provider.shutdown();
}

const tracer = trace.getTracer("keygate");

/** Reads W3C trace context (`traceparent`, `tracestate`) from a Fetch API Headers object. */
const headerGetter: TextMapGetter<Headers> = {
  get: (carrier, key) => carrier.get(key) ?? undefined,
  keys: (carrier) => [...carrier.keys()],
};

/**
 * Runs `fn` inside a span named `name`, recording an error status when it throws. With the
 * caller's request headers, the span is a server span that continues the caller's trace
 * (W3C `traceparent`; the provider registers the W3C propagator), so keygate appears inside it.
 */
export function traced<T>(
  name: string,
  attributes: Record<string, string | number | boolean>,
  fn: (span: Span) => Promise<T>,
  callerHeaders?: Headers,
): Promise<T> {
  const parent = callerHeaders
    ? propagation.extract(context.active(), callerHeaders, headerGetter)
    : context.active();
  const kind = callerHeaders ? SpanKind.SERVER : SpanKind.INTERNAL;
  return tracer.startActiveSpan(name, { attributes, kind }, parent, async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      span.setStatus({
        code: SpanStatusCode.ERROR,
        message: err instanceof Error ? err.message : String(err),
      });
      throw err;
    } finally {
      span.end();
    }
  });
}
