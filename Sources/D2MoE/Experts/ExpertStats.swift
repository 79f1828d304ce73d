import Foundation

/// What the streamed experts did, per MoE layer and in total (DESIGN §3.4: everything observable).
/// Times are seconds summed over the steps measured.
public struct ExpertStreamStats: Codable, Sendable {
    public struct Layer: Codable, Sendable {
        /// Bytes read from the file.
        public var bytesRead = 0
        /// [level-1]: pieces read, pieces found resident.
        public var piecesRead: [Int]
        public var hits: [Int]
        /// Time at least one read was in flight during this layer's expert steps.
        public var ioBusy = 0.0
        /// Time computing expert groups.
        public var computeBusy = 0.0
        /// Time the compute thread waited for reads ("compute bubbles").
        public var computeIdle = 0.0
        /// Wall time of the expert steps; ioIdle = wall − ioBusy ("I/O bubbles").
        public var wall = 0.0
        /// (token, expert) pairs at each level.
        public var expertTokens: [Int]
        /// Pieces read ahead for the next layer while this one ran, and pieces this layer found
        /// resident because they were read ahead.
        public var prefetched = 0
        public var prefetchHits = 0
        /// Tokens routed through the layer (summed over steps).
        public var tokens = 0
        /// What the miss policy did.
        public var misses = MissCounts()
        /// Slots of the layer's routes that a prefetch predicted, and how many of the predicted
        /// experts were among the chosen ones (the next-layer prediction's accuracy).
        public var predictedSlots = 0
        public var predictedHits = 0
        /// Steps of this layer whose prefetch was withheld because the prediction had been
        /// right less often than `--prefetch-min-accuracy`.
        public var prefetchWithheld = 0

        init(levels: Int) {
            piecesRead = Array(repeating: 0, count: levels)
            hits = Array(repeating: 0, count: levels)
            expertTokens = Array(repeating: 0, count: levels)
        }

        public var ioIdle: Double { max(0, wall - ioBusy) }

        mutating func add(_ o: Layer) {
            bytesRead += o.bytesRead
            for k in piecesRead.indices {
                piecesRead[k] += o.piecesRead[k]; hits[k] += o.hits[k]; expertTokens[k] += o.expertTokens[k]
            }
            prefetched += o.prefetched; prefetchHits += o.prefetchHits
            tokens += o.tokens; misses.add(o.misses); predictedSlots += o.predictedSlots; predictedHits += o.predictedHits
            prefetchWithheld += o.prefetchWithheld
            ioBusy += o.ioBusy; computeBusy += o.computeBusy; computeIdle += o.computeIdle; wall += o.wall
        }
    }

    /// Whole forward passes (attention and output head included): the pipeline's efficiency is
    /// judged per step, as wall ÷ max(I/O busy, compute busy) of the same step. Summing the
    /// layers of all steps first would mix compute-bound prompt steps with I/O-bound generation
    /// steps and count as bubbles what is only one resource waiting in another phase.
    public struct Steps: Codable, Sendable {
        public var count = 0
        public var wall = 0.0
        /// Time at least one read was in flight during the steps.
        public var ioBusy = 0.0
        /// Wall time less the time the compute thread waited for reads.
        public var computeBusy = 0.0
        /// Σ over steps of max(I/O busy, compute busy): the steps' time with perfect overlap.
        public var bound = 0.0
        /// ∫ reads in flight dt: ÷ ioBusy, the mean number in flight while any is.
        public var ioDepthTime = 0.0
        public var meanReadsInFlight: Double { ioBusy > 0 ? ioDepthTime / ioBusy : 0 }

        /// Σ wall ÷ Σ max(I/O busy, compute busy); 1 is perfect overlap.
        public var efficiency: Double { bound > 0 ? wall / bound : 0 }

        mutating func add(wall: Double, ioBusy: Double, computeIdle: Double, ioDepthTime: Double) {
            let busy = max(0, wall - computeIdle)
            count += 1
            self.ioDepthTime += ioDepthTime
            self.wall += wall
            self.ioBusy += ioBusy
            computeBusy += busy
            bound += max(ioBusy, busy)
        }
    }

    /// Steps that process several tokens of a sequence (prompts), and the others (generation).
    public var promptSteps = Steps()
    public var generationSteps = Steps()

    public var layers: [Layer]
    /// Bits of each level, for reading `expertTokens`.
    public var bits: [Int]
    public var budgetBytes: Int
    /// The pool's own accounting: its highest fill, and bytes resident now.
    public var peakPoolBytes = 0
    public var poolBytes = 0
    public var evictions = 0
    /// Reads into freshly mapped buffers, and into buffers of evicted pieces.
    public var buffersMapped = 0
    public var buffersReused = 0
    /// Bytes of fresh pages reads were given (faulted in and zeroed inside the read), over the
    /// backend's life: the rest of its reads went into recycled pages.
    public var freshPageBytes = 0
    public var directIO: Bool
    public var eviction: String
    public var bitPolicy: String

    init(layers: Int, bits: [Int], budget: Int, directIO: Bool, eviction: String, bitPolicy: String) {
        self.layers = Array(repeating: Layer(levels: bits.count), count: layers)
        self.bits = bits
        budgetBytes = budget
        self.directIO = directIO
        self.eviction = eviction
        self.bitPolicy = bitPolicy
    }

    public var total: Layer {
        var t = Layer(levels: bits.count)
        for l in layers { t.add(l) }
        return t
    }

    /// Fraction of needed pieces found resident, per level.
    public var hitRatio: [Double] {
        let t = total
        return t.hits.indices.map { k in
            let n = t.hits[k] + t.piecesRead[k]
            return n == 0 ? 0 : Double(t.hits[k]) / Double(n)
        }
    }

    /// Fraction of the chosen experts the next-layer prediction named.
    public var predictionAccuracy: Double {
        let t = total
        return t.predictedSlots == 0 ? 0 : Double(t.predictedHits) / Double(t.predictedSlots)
    }

    /// Expert bytes read per token (tokens counted once, not once per layer).
    public var bytesReadPerToken: Double {
        let t = total
        let tokens = Double(t.tokens) / Double(max(1, layers.count))
        return tokens == 0 ? 0 : Double(t.bytesRead) / tokens
    }

    /// A count over the run per token per MoE layer.
    public func perToken(_ n: Int) -> Double {
        let t = total.tokens
        return t == 0 ? 0 : Double(n) / Double(t)
    }

    /// Fraction of all needed pieces found resident.
    public var overallHitRatio: Double {
        let t = total
        let hits = t.hits.reduce(0, +), n = hits + t.piecesRead.reduce(0, +)
        return n == 0 ? 0 : Double(hits) / Double(n)
    }

    /// Average bits per (token, expert).
    public var averageBits: Double {
        let t = total.expertTokens
        let n = t.reduce(0, +)
        return n == 0 ? 0 : Double(zip(t, bits).reduce(0) { $0 + $1.0 * $1.1 }) / Double(n)
    }

    /// Lines for `--stats`.
    public func summary(perLayer: Bool = false) -> String {
        let t = total
        func ms(_ s: Double) -> String { String(format: "%.1f ms", s * 1000) }
        var lines = [
            String(format: "experts: budget %@ (pool peak %@), %@ I/O, eviction %@, bits %@ (average %.2f bits)",
                   mib(budgetBytes), mib(peakPoolBytes), directIO ? "direct" : "buffered", eviction, bitPolicy, averageBits),
            String(format: "experts: read %@ in %d pieces %@, hit ratio per level %@, %d evictions",
                   mib(t.bytesRead), t.piecesRead.reduce(0, +), "\(t.piecesRead)",
                   "[" + hitRatio.map { String(format: "%.2f", $0) }.joined(separator: ", ") + "]", evictions)
                + " (\(buffersReused) reads into recycled buffers, \(buffersMapped) into fresh ones; \(mib(freshPageBytes)) of fresh pages in all)",
            "experts: prefetched \(t.prefetched) pieces, \(t.prefetchHits) of them used"
                + (t.predictedSlots > 0 ? String(format: "; next-layer prediction accuracy %.3f", predictionAccuracy) : "")
                + (t.prefetchWithheld > 0 ? "; withheld in \(t.prefetchWithheld) layer steps (prediction accuracy below the minimum)" : ""),
            String(format: "experts: per token per MoE layer %.3f substituted, %.3f downgraded, %.3f skipped; %@ read per token",
                   perToken(t.misses.substituted), perToken(t.misses.downgraded), perToken(t.misses.skipped),
                   mib(Int(bytesReadPerToken))),
            "experts: wall \(ms(t.wall)), I/O busy \(ms(t.ioBusy)) (idle \(ms(t.ioIdle))), compute busy \(ms(t.computeBusy)) (idle \(ms(t.computeIdle)))",
        ]
        for (name, st) in [("prompt", promptSteps), ("generation", generationSteps)] where st.count > 0 {
            lines.append(String(format: "experts: %@ steps %d, wall %@, I/O busy %@ (%.1f reads in flight), compute busy %@: pipeline efficiency %.2f (Σ wall ÷ Σ max(I/O busy, compute busy) per step)",
                                name, st.count, ms(st.wall), ms(st.ioBusy), st.meanReadsInFlight, ms(st.computeBusy), st.efficiency))
        }
        if perLayer {
            for (i, l) in layers.enumerated() {
                lines.append(String(format: "  layer %2d: read %@ %@ hits %@ | wall %.1f ms, I/O busy %.1f, compute busy %.1f, compute idle %.1f",
                                    i, mib(l.bytesRead), "\(l.piecesRead)", "\(l.hits)", l.wall * 1000, l.ioBusy * 1000,
                                    l.computeBusy * 1000, l.computeIdle * 1000))
            }
        }
        return lines.joined(separator: "\n")
    }

    private func mib(_ n: Int) -> String { String(format: "%.1f MiB", Double(n) / 1_048_576) }
}

/// A memory budget as given on the command line: bytes (`512MiB`, `2GiB`, `1.5GB`, `4096`) or a
/// fraction of the experts' bytes (`25%`).
public enum MemoryBudget: Sendable, Equatable, CustomStringConvertible {
    case bytes(Int)
    case fraction(Double)

    public init(parsing text: String) throws {
        let s = text.trimmingCharacters(in: .whitespaces)
        if s.hasSuffix("%") {
            guard let v = Double(s.dropLast()), v > 0, v <= 100 else { throw ModelError("memory budget '\(text)': a percentage must be in (0, 100]") }
            self = .fraction(v / 100)
            return
        }
        let units: [(String, Double)] = [("KiB", 1024), ("MiB", 1_048_576), ("GiB", 1_073_741_824), ("TiB", 1_099_511_627_776),
                                         ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12),
                                         ("K", 1024), ("M", 1_048_576), ("G", 1_073_741_824), ("B", 1)]
        var number = Substring(s), scale = 1.0
        for (u, f) in units where s.hasSuffix(u) {
            number = s.dropLast(u.count)
            scale = f
            break
        }
        guard let v = Double(number.trimmingCharacters(in: .whitespaces)), v > 0, v * scale < 1e18 else {
            throw ModelError("memory budget '\(text)' is not a size (such as 512MiB, 2GiB, 1.5GB) or a percentage (25%)")
        }
        self = .bytes(Int(v * scale))
    }

    /// Bytes, given the total bytes of the experts.
    public func bytes(ofExperts total: Int) -> Int {
        switch self {
        case .bytes(let b): return b
        case .fraction(let f): return Int(Double(total) * f)
        }
    }

    public var description: String {
        switch self {
        case .bytes(let b): return "\(b) bytes"
        case .fraction(let f): return String(format: "%g%% of the experts", f * 100)
        }
    }
}
