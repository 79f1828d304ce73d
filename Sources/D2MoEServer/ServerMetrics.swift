import D2MoE
import Foundation
import CoreMetrics
import Metrics
import Prometheus

/// The server's metrics, recorded through swift-metrics into a registry of this server's own
/// (not the process-wide bootstrap, so several servers can live in one process) and served at
/// `/metrics` in Prometheus's text format.
final class ServerMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    let promptTokens: CoreMetrics.Counter
    let generatedTokens: CoreMetrics.Counter
    let queueLength: CoreMetrics.Gauge
    let batchSize: CoreMetrics.Gauge
    let kvCacheBytes: CoreMetrics.Gauge
    let timeToFirstToken: CoreMetrics.Timer
    let tokenLatency: CoreMetrics.Timer
    let poolHitRatio: CoreMetrics.Gauge
    let expertBytesRead: CoreMetrics.Gauge
    let steps: CoreMetrics.Counter

    init() {
        var f = PrometheusMetricsFactory(registry: registry)
        f.defaultDurationHistogramBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60].map { .milliseconds(Int($0 * 1000)) }
        factory = f
        promptTokens = CoreMetrics.Counter(label: "d2moe_prompt_tokens_total", factory: f)
        generatedTokens = CoreMetrics.Counter(label: "d2moe_generated_tokens_total", factory: f)
        queueLength = CoreMetrics.Gauge(label: "d2moe_queue_length", factory: f)
        batchSize = CoreMetrics.Gauge(label: "d2moe_batch_size", factory: f)
        kvCacheBytes = CoreMetrics.Gauge(label: "d2moe_kv_cache_bytes", factory: f)
        timeToFirstToken = CoreMetrics.Timer(label: "d2moe_time_to_first_token_seconds", factory: f)
        tokenLatency = CoreMetrics.Timer(label: "d2moe_token_latency_seconds", factory: f)
        poolHitRatio = CoreMetrics.Gauge(label: "d2moe_expert_pool_hit_ratio", factory: f)
        expertBytesRead = CoreMetrics.Gauge(label: "d2moe_expert_bytes_read", factory: f)
        steps = CoreMetrics.Counter(label: "d2moe_batch_steps_total", factory: f)
    }

    /// Counts one answered request.
    func request(endpoint: String, status: Int) {
        CoreMetrics.Counter(label: "d2moe_requests_total", dimensions: [("endpoint", endpoint), ("status", String(status))], factory: factory).increment()
    }

    /// Called on the scheduler thread after each batch step.
    func record(step: SchedulerStep, snapshot: SchedulerSnapshot, experts: ExpertStreamStats?) {
        steps.increment()
        batchSize.record(step.sequences)
        queueLength.record(snapshot.queued)
        kvCacheBytes.record(snapshot.kvBytesInUse)
        // Every decode token of a step waited the whole step.
        if step.decodeTokens > 0 { tokenLatency.recordNanoseconds(Int64(step.seconds * 1e9)) }
        if let experts {
            let t = experts.total
            let hits = t.hits.reduce(0, +), reads = t.piecesRead.reduce(0, +)
            if hits + reads > 0 { poolHitRatio.record(Double(hits) / Double(hits + reads)) }
            expertBytesRead.record(t.bytesRead)
        }
    }

    func text(snapshot: SchedulerSnapshot) -> String {
        queueLength.record(snapshot.queued)
        return registry.emitToString()
    }
}
