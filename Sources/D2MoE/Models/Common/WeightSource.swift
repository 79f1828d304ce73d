import D2MoEKernels

/// Where a model's weights come from. Names are the Hugging Face checkpoint's own
/// (`model.layers.0.self_attn.q_proj.weight`); a GGUF source translates them to llama.cpp's names
/// through the architecture's `ggufName` table.
public protocol WeightSource: AnyObject {
    /// A human-readable origin (the file path) for error messages.
    var origin: String { get }
    /// Shape outermost-first (PyTorch order: a linear weight is [out, in]), nil when absent.
    func shape(of name: String) -> [Int]?
    /// All elements as float32, row-major in PyTorch order.
    func floats(_ name: String) throws -> [Float]
    /// For a [rows, cols] tensor this source can read a few rows at a time: a function writing rows
    /// `range` as float32 into its buffer (a read error is thrown). nil: only `floats` (the whole
    /// tensor) is available.
    func rowReader(_ name: String) throws -> ((Range<Int>, UnsafeMutablePointer<Float>) throws -> Void)?
}

/// A source that lists the tensors an architecture asks for, in order, without building the
/// model around them: routed experts are named (`record`), never read, so listing a model whose
/// experts exceed memory costs only its resident part.
protocol TensorNameRecorder: WeightSource {
    func record(_ name: String)
}

extension WeightSource {
    public func rowReader(_ name: String) throws -> ((Range<Int>, UnsafeMutablePointer<Float>) throws -> Void)? { nil }
}

/// Errors building a model: the message names the file, the tensor and the problem.
public struct ModelError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Options that apply while weights are turned into a model.
public struct LoadOptions: Sendable {
    /// Element type of the dense weight matrices (activations are always float32).
    public var dtype: ElementType
    /// Context length the model is run at; nil keeps the model's own (capped at 4096).
    public var contextLength: Int?
    /// Experts chosen per token in MoE layers; nil keeps the model's own.
    public var expertsPerToken: Int?

    /// For `.mwq` files: serve every expert at this many bits (one of the file's levels); nil
    /// serves the highest level.
    public var bits: Int?
    /// For `.mwq` files: dequantize experts to `dtype` at load instead of computing on the packed
    /// bit-planes (the plain path the kernels are checked against).
    public var dequantizeMWQ = false
    /// For `.mwq` files with routed experts: stream them through a budgeted pool instead of
    /// mapping them all (nil keeps every expert resident).
    public var streaming: ExpertStreaming?
    /// For `.mwq` files without streaming: the bit-width policy of the experts held in memory
    /// ("router": the trained bit-width routers; "gate": HOBBIT's rule); nil or "uniform" serves
    /// every expert at `bits`. Streamed experts take theirs from `streaming.bitPolicy`.
    public var bitPolicy: String?
    /// `--bits-bias`: added to each bit-width router's logit of level k times (k − mean level);
    /// negative toward fewer bits.
    public var bitsBias = 0.0
    /// `--target-bits`: the bias that gives this average on the routers' calibration logits.
    public var targetBits: Double?
    /// `--router-levels adjacent`: with `targetBits`, the routers choose only between the two
    /// levels whose bits bracket it (see `BitRouterTable.bracket`).
    public var adjacentRouterLevels = false

    public init(dtype: ElementType = .f32, contextLength: Int? = nil, expertsPerToken: Int? = nil, bits: Int? = nil) {
        self.dtype = dtype
        self.contextLength = contextLength
        self.expertsPerToken = expertsPerToken
        self.bits = bits
    }
}

/// How routed experts are streamed from an `.mwq` file (DESIGN §3.4).
public struct ExpertStreaming: Sendable {
    /// The pool's size.
    public var budget: MemoryBudget
    /// Bypass the page cache with O_DIRECT where the file system allows it.
    public var directIO = true
    /// Reads in flight at once.
    public var ioThreads = 4
    /// `--eviction`: layer (the paper's rule), lru or lfu.
    public var eviction = "layer"
    /// `--bit-policy`: uniform (every expert at `LoadOptions.bits`, default the highest level)
    /// gate (HOBBIT's gate-score thresholds) or static (`expertBits`, EdgeMoE's).
    public var bitPolicy = "uniform"
    /// Per-expert bit-widths for the static bit policy (`d2moe calibrate-bits`).
    public var expertBits: ExpertBitTable?
    public var gateThresholds: [Double] = [0.6, 0.9]
    /// The order missing pieces are read in.
    public var order = LoadOrder.hebf
    /// Read the next MoE layer's predicted experts while the current one computes.
    public var prefetch = false
    /// Withhold a layer's prefetch while its prediction has been right less often than this
    /// (a share of the chosen (token, expert) slots, averaged over recent steps); 0 always
    /// prefetches.
    public var prefetchMinAccuracy = 0.5
    /// Keep base levels (level 1) resident in preference to higher ones while they fill at most
    /// this share of the budget (the paper's "+Budget" step); 0 turns it off.
    public var lowLevelShare = 0.0
    /// The `--policy` preset applied, if any (some need a file of a particular kind).
    public var policy: String?
    /// What to do with chosen experts that are not resident: none (read them), smoe
    /// (substitution, `alpha`, `substituteWeight`) or hobbit (low-bit fallback, `hobbitThresholds`).
    public var missPolicy = "none"
    /// SMoE's α: chosen experts scoring below (1+α)·S_{k+1} may be substituted.
    public var alpha = 0.2
    public var substituteWeight = SubstituteWeight.own
    /// HOBBIT's T1, T2 and the level a mid-importance miss reads.
    public var hobbitThresholds = (t1: 0.6, t2: 0.9)
    public var hobbitLowLevel = 1
    /// Steps of gate scores score-based eviction averages.
    public var scoreWindow = 8

    /// The engine's configurations of DESIGN §3.6 that stream experts, by `--policy` name.
    public static let policies = [
        ("d2moe", "HEBF load order, the paper's eviction rule weighted by how often each piece is needed (--eviction reuse), base levels kept in half the budget, next-layer prefetch; bit-widths from --bit-policy"),
        ("moqe-dynaio", "one uniform bit-width (--bits), experts read on demand in id order, LRU eviction, no prefetch"),
        ("matryoshka-free", "separate INT2/3/4 copies (a file quantized or synthesized with --scheme mfree), bit-widths from --bit-policy, each read whole on demand in id order, LRU eviction, no prefetch"),
        ("edgemoe", "static per-expert bit-widths by importance on calibration data (--expert-bits FILE from d2moe calibrate-bits), read on demand in id order, LRU eviction, next-layer preload"),
        ("smoe", "importance-driven substitution (--alpha A): a low-score chosen expert that is not resident is replaced by a resident one scoring within α of the (k+1)-th, or by another token's top expert; score-based eviction (--score-window), top-score next-layer prefetch, HEBF order"),
        ("hobbit", "HOBBIT's fallback (--t1, --t2): a miss reads the full level, a low level or is skipped by its token's cumulative gate weight before it; HOBBIT's cache priority (recency, frequency, high-precision use, layer distance), prefetch, HEBF order"),
        ("evict-lru", "the importance comparison's baselines: every chosen expert read on a miss at --bit-policy's bits, HEBF order, no prefetch, and LRU eviction (evict-lfu: LFU, evict-layer: the paper's rule, evict-score: score-based)"),
        ("hold-int4", "every expert resident at 4 bits (no budget; the file must hold a 4-bit level)"),
        ("hold-int8", "every expert resident at 8 bits (no budget; the file must hold an 8-bit level)"),
    ]

    /// Applies preset `name` (one of `policies` that streams).
    public mutating func apply(policy name: String) throws {
        policy = name
        switch name {
        case "d2moe":
            order = .hebf; eviction = "reuse"; lowLevelShare = 0.5; prefetch = true
        case "moqe-dynaio":
            order = .expertID; eviction = "lru"; lowLevelShare = 0; prefetch = false; bitPolicy = "uniform"
        case "matryoshka-free":
            order = .expertID; eviction = "lru"; lowLevelShare = 0; prefetch = false
        case "edgemoe":
            order = .expertID; eviction = "lru"; lowLevelShare = 0; prefetch = true; bitPolicy = "static"
        case "smoe":
            order = .hebf; eviction = "score"; lowLevelShare = 0; prefetch = true; missPolicy = "smoe"
        case "hobbit":
            order = .hebf; eviction = "hobbit"; lowLevelShare = 0; prefetch = true; missPolicy = "hobbit"
        case "evict-lru", "evict-lfu", "evict-layer", "evict-score":
            order = .hebf; eviction = String(name.dropFirst("evict-".count)); lowLevelShare = 0; prefetch = false; missPolicy = "none"
        default:
            throw ModelError("unknown policy '\(name)' (\((Self.policies.map(\.0) + ["evict-lfu", "evict-layer", "evict-score"]).joined(separator: ", ")))")
        }
    }

    public init(budget: MemoryBudget) { self.budget = budget }
}

extension WeightSource {
    func contains(_ name: String) -> Bool { shape(of: name) != nil }

    /// A [rows, cols] weight, checked against the expected shape.
    func matrix(_ name: String, rows: Int, cols: Int, dtype: ElementType) throws -> DenseMatrix {
        try checkShape(name, [rows, cols])
        if let read = try rowReader(name) {
            return try DenseMatrix.quantized(rows: rows, cols: cols, type: dtype.holds(cols: cols) ? dtype : .f16, fill: read)
        }
        return DenseMatrix.make(rows: rows, cols: cols, values: try floats(name), dtype: dtype)
    }

    /// A vector of n elements.
    func vector(_ name: String, count: Int) throws -> [Float] {
        try checkedFloats(name, shape: [count])
    }

    func checkedFloats(_ name: String, shape expected: [Int]) throws -> [Float] {
        try checkShape(name, expected)
        return try floats(name)
    }

    func checkShape(_ name: String, _ expected: [Int]) throws {
        guard let shape = shape(of: name) else {
            throw ModelError("\(origin): missing tensor '\(name)'")
        }
        guard shape == expected else {
            throw ModelError("\(origin): tensor '\(name)' has shape \(shape), expected \(expected)")
        }
    }
}

extension DenseMatrix {
    /// Builds a matrix of the given element type from float32 values (Q8_0 needs rows a multiple of
    /// 32 long; others fall back to float16).
    static func make(rows: Int, cols: Int, values: [Float], dtype: ElementType) -> DenseMatrix {
        values.withUnsafeBufferPointer { DenseMatrix.quantized(rows: rows, cols: cols, values: $0, type: dtype.holds(cols: cols) ? dtype : .f16) }
    }
}
