import CD2MoEKernels

/// A read-only view of one MWQ ("Matryoshka weight quantization") matrix in its tiled, packed
/// layout — the bytes a container stores, which the kernels read in place. The memory belongs to
/// someone else (a mapped container, a buffer) and must outlive the view.
///
/// W is `rows` × `cols`, cut into groups of g = `group` consecutive columns per row (32…256,
/// a multiple of 32; G = cols / g) and into blocks of 32 rows (RB = ⌈rows / 32⌉, the last block
/// padded with zero rows). Q = g / 4 "quads" of 4 columns per group. Tiles (block b, group j) are
/// stored in order b·G + j:
///
/// - Level 1, the base: an unsigned code q ∈ [0, 2^b1) per weight (b1 = `baseBits`, 1…8), value
///   s·q + m. Tile = b1 planes (p = 0 the least significant bit) × Q quads × 16 bytes, then float16
///   s of the block's 32 rows, then float16 m of the 32 rows: 4·b1·g + 128 bytes.
/// - Each sign level 2, 3, …: one bit per weight, 1 = +1 and 0 = −1, and a float16 scale s_k per
///   row and group; the level adds s_k·(±1). Tile = Q × 16 bytes of plane, then float16 s_k of the
///   32 rows: 4·g + 64 bytes.
/// - A plane's 16 bytes for quad c: byte i's low nibble holds row i of the block, its high nibble
///   row 16 + i; nibble bit t is column j·g + 4c + t. This is what lets one byte shuffle look up
///   32 rows at once (see `MWQKernels`).
///
/// Bits per weight at level L: b1 + (L − 1) + (32 + 16·(L − 1)) / g (for a multiple of 32 rows).
public struct MWQMatrixView: @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    /// Columns per group g: 32, 64, 128 or 256.
    public let group: Int
    /// Bits b1 of the base code, 1…8.
    public let baseBits: Int
    /// The tiles of level 1, 2, …: `levelByteCount` bytes each, 4-byte aligned.
    public let levels: [UnsafeRawPointer]

    public init(rows: Int, cols: Int, group: Int, baseBits: Int, levels: [UnsafeRawPointer]) {
        precondition(rows >= 0 && cols >= 0, "MWQMatrixView: shape \(rows)x\(cols)")
        precondition(Self.validGroup(group) && cols % group == 0, "MWQMatrixView: group \(group) with \(cols) columns")
        precondition((1...8).contains(baseBits), "MWQMatrixView: \(baseBits) base bits")
        precondition(!levels.isEmpty, "MWQMatrixView: no levels")
        self.rows = rows
        self.cols = cols
        self.group = group
        self.baseBits = baseBits
        self.levels = levels
    }

    public static func validGroup(_ g: Int) -> Bool { g >= 32 && g <= 256 && g % 32 == 0 }

    /// Groups per row, G.
    public var groups: Int { cols / group }
    /// Blocks of 32 rows.
    public var rowBlocks: Int { (rows + 31) / 32 }
    /// The highest level the view can serve.
    public var maxLevel: Int { levels.count }

    /// Bytes of one tile of level `level` (1-based).
    public static func tileBytes(level: Int, group: Int, baseBits: Int) -> Int {
        level == 1 ? 4 * baseBits * group + 128 : 4 * group + 64
    }

    /// Bytes of level `level` (1-based) of a matrix of this shape.
    public static func levelByteCount(level: Int, rows: Int, cols: Int, group: Int, baseBits: Int) -> Int {
        (rows + 31) / 32 * (cols / group) * tileBytes(level: level, group: group, baseBits: baseBits)
    }

    /// Bytes a product at `levels` reads.
    public func byteCount(levels: Int) -> Int {
        (1...levels).reduce(0) { $0 + Self.levelByteCount(level: $1, rows: rows, cols: cols, group: group, baseBits: baseBits) }
    }
}

/// Conversion between the tiled layout of `MWQMatrixView` and a plain one that is easy to fill:
/// per row r and group j, words ((r·G + j)·P + p)·(g/32) + w of P planes, bit i of word w being
/// column j·g + 32w + i; scales per (r·G + j), `scalesPerGroup` of them (s, m for the base).
public enum MWQTiles {
    /// The tiled bytes of one level.
    public static func encode(planes: [UInt32], planesPerGroup P: Int, scales: [UInt16], scalesPerGroup S: Int,
                              rows: Int, cols: Int, group: Int) -> [UInt8] {
        let G = cols / group, n32 = group / 32, Q = group / 4
        precondition(planes.count == rows * G * P * n32 && scales.count == rows * G * S, "MWQTiles.encode: sizes")
        let tile = P * Q * 16 + S * 64
        var out = [UInt8](repeating: 0, count: (rows + 31) / 32 * G * tile)
        for b in 0..<((rows + 31) / 32) {
            for j in 0..<G {
                let at = (b * G + j) * tile
                for i in 0..<32 where b * 32 + i < rows {
                    let r = b * 32 + i, gi = r * G + j
                    for p in 0..<P {
                        for c in 0..<Q {
                            let nibble = UInt8(truncatingIfNeeded: planes[(gi * P + p) * n32 + c / 8] >> UInt32(4 * (c % 8)) & 0xF)
                            out[at + (p * Q + c) * 16 + i % 16] |= i < 16 ? nibble : nibble << 4
                        }
                    }
                    for s in 0..<S {
                        let v = scales[gi * S + s]
                        out[at + P * Q * 16 + s * 64 + 2 * i] = UInt8(v & 0xFF)
                        out[at + P * Q * 16 + s * 64 + 2 * i + 1] = UInt8(v >> 8)
                    }
                }
            }
        }
        return out
    }

    /// The plain planes and scales of one level's tiled bytes (`encode` undone).
    public static func decode(_ bytes: UnsafeRawBufferPointer, planesPerGroup P: Int, scalesPerGroup S: Int,
                              rows: Int, cols: Int, group: Int) -> (planes: [UInt32], scales: [UInt16]) {
        let G = cols / group, n32 = group / 32, Q = group / 4
        let tile = P * Q * 16 + S * 64
        precondition(bytes.count == (rows + 31) / 32 * G * tile, "MWQTiles.decode: \(bytes.count) bytes")
        var planes = [UInt32](repeating: 0, count: rows * G * P * n32)
        var scales = [UInt16](repeating: 0, count: rows * G * S)
        for r in 0..<rows {
            let b = r / 32, i = r % 32
            for j in 0..<G {
                let at = (b * G + j) * tile, gi = r * G + j
                for p in 0..<P {
                    for c in 0..<Q {
                        let byte = bytes[at + (p * Q + c) * 16 + i % 16]
                        let nibble = UInt32(i < 16 ? byte & 0xF : byte >> 4)
                        planes[(gi * P + p) * n32 + c / 8] |= nibble << UInt32(4 * (c % 8))
                    }
                }
                for s in 0..<S {
                    scales[gi * S + s] = UInt16(bytes[at + P * Q * 16 + s * 64 + 2 * i])
                        | UInt16(bytes[at + P * Q * 16 + s * 64 + 2 * i + 1]) << 8
                }
            }
        }
        return (planes, scales)
    }
}

/// Activations as the MWQ kernels consume them, in caller-owned memory (see `byteCount`): per
/// token t and group j of g columns, integers xq = round(x·R / amax) (amax the group's largest
/// |x|, R = `range(group:)`) and the scale amax / R; then, by `route`, either Σ xq and for each quad
/// c of 4 columns the 16 sums v[e] = Σ_{bit i of e} xq[4c + i] as int16 split into 16 low bytes
/// then 16 high bytes (`.tables`), or xq itself (`.gemm`, for long inputs: `MWQKernels.prefersGemm`).
public struct MWQPreparedInput: @unchecked Sendable {
    /// How the products will read the input.
    public enum Route: Sendable {
        /// Nibble tables for the table-lookup kernel.
        case tables
        /// The integers themselves, for the kernel that requantizes the weights to int16.
        case gemm
    }

    public let tokens: Int
    public let cols: Int
    public let group: Int
    public let route: Route
    /// [tokens, G]
    public let scales: UnsafeMutablePointer<Float>
    /// [tokens, cols / 4, 32] bytes with `.tables`, else nil.
    public let tables: UnsafeMutablePointer<UInt8>?
    /// [tokens, G] with `.tables`, else nil.
    public let sums: UnsafeMutablePointer<Int32>?
    /// [tokens, cols] with `.gemm`, else nil.
    public let integers: UnsafeMutablePointer<Int16>?

    /// The largest |xq| for groups of g columns: as fine as the kernels' int16 sums allow
    /// (4·R per table entry, g/4 entries per group: R = ⌊32767 / g⌋), so 511 steps each way for
    /// g = 64 and 255 for g = 128 — finer than int8, at no cost.
    public static func range(group g: Int) -> Int { 32767 / g }

    /// Bytes of the memory `init` needs.
    public static func byteCount(tokens: Int, cols: Int, group: Int, route: Route = .tables) -> Int {
        let G = cols / group
        switch route {
        case .tables: return tokens * G * 8 + tokens * cols * 8
        case .gemm: return tokens * G * 4 + tokens * cols * 2
        }
    }

    /// `memory`: `byteCount` bytes, 4-byte aligned.
    public init(memory: UnsafeMutableRawPointer, tokens: Int, cols: Int, group: Int, route: Route = .tables) {
        precondition(MWQMatrixView.validGroup(group) && cols % group == 0, "MWQPreparedInput: group \(group) with \(cols) columns")
        self.tokens = tokens
        self.cols = cols
        self.group = group
        self.route = route
        let G = cols / group
        scales = memory.bindMemory(to: Float.self, capacity: tokens * G)
        switch route {
        case .tables:
            sums = (memory + tokens * G * 4).bindMemory(to: Int32.self, capacity: tokens * G)
            tables = (memory + tokens * G * 8).bindMemory(to: UInt8.self, capacity: tokens * cols * 8)
            integers = nil
        case .gemm:
            sums = nil
            tables = nil
            integers = (memory + tokens * G * 4).bindMemory(to: Int16.self, capacity: tokens * cols)
        }
    }
}

/// Products with MWQ matrices on their packed planes (see `MWQMatrixView`), never dequantizing:
/// the activations become integers per group (8 to 10 bits, `MWQPreparedInput.range`) and nibble lookup tables (`prepare`, once
/// per input, shared by every matrix that reads it), and each plane's masked sums S = Σ_{bit set} xq
/// for 32 rows come from table lookups. A group contributes
/// scale·(s·Σ_p 2^p·S_p + m·X + Σ_k s_k·(2·S_k − X)), X = Σ xq. `MWQReference` is the plain version
/// they are tested against.
public enum MWQKernels {
    /// Fills `into` from x: [tokens, cols].
    public static func prepare(_ x: UnsafePointer<Float>, into p: MWQPreparedInput, path: KernelPath = .best) {
        switch path {
        case .avx2:
            precondition(KernelPath.best == .avx2, "MWQKernels.prepare: no AVX2 here")
            d2moe_mwq_prepare_avx2(x, p.tokens, p.cols, Int32(p.group), p.tables, p.scales, p.sums, p.integers)
        case .portable:
            PortableMWQ.prepare(x, p)
        }
    }

    /// Whether a product of `tokens` tokens at `planes` bit-planes (base bits + sign levels) is
    /// faster on the `.gemm` route (`Linear` prepares its input so): requantizing a block of rows
    /// costs about as much as a dozen tokens, after which a token costs the same at any level,
    /// while the table route costs a lookup per plane per token. Measured on 1536x576 and
    /// 576x1536, one core: at 2 planes the table route is as fast or faster up to 128 tokens; the
    /// break-even is at 32-64 tokens for 3 planes, 12-16 for 4, under 16 for 8.
    public static func prefersGemm(tokens: Int, planes: Int) -> Bool { planes >= 3 && tokens * (planes - 2) >= 32 }

    /// y[t·rows + r] = Σ_c Ŵ[r, c]·x̃[t·cols + c] with Ŵ served at `levels` (1…m.maxLevel) and x̃
    /// the prepared activations; y: [tokens, rows]. Blocks of 32 rows are split over the pool.
    /// With a `.gemm` input, Ŵ is requantized to int16 per row and group first
    /// (`MWQReference.gemmWeights`), which moves each weight by at most (planes + 1)/2 steps of
    /// B/32750, B the largest |Ŵ| the group's scales allow.
    public static func matmul(_ m: MWQMatrixView, levels: Int, _ x: MWQPreparedInput, _ y: UnsafeMutablePointer<Float>,
                              pool: ComputePool = .shared, path: KernelPath = .best) {
        withUnsafeTemporaryAllocation(of: MWQProduct.self, capacity: 1) { p in
            p.initialize(repeating: MWQProduct(m, levels: levels, y))
            matmul(UnsafeBufferPointer(p), x, pool: pool, path: path)
            p.deinitialize()
        }
    }

    /// Every product of `products` (matrices reading the same input, e.g. q, k and v) in one pass
    /// over the pool: their row blocks are split as one list, so small matrices do not each pay a
    /// dispatch and leave threads idle.
    public static func matmul(_ products: UnsafeBufferPointer<MWQProduct>, _ x: MWQPreparedInput,
                              pool: ComputePool = .shared, path: KernelPath = .best) {
        precondition(path != .avx2 || KernelPath.best == .avx2, "MWQKernels.matmul: no AVX2 here")
        var blocks = 0, work = 0, pointers = 0
        for p in products {
            let m = p.matrix
            precondition((1...m.maxLevel).contains(p.levels), "MWQKernels.matmul: level \(p.levels) of \(m.maxLevel)")
            precondition(x.cols == m.cols && x.group == m.group, "MWQKernels.matmul: input prepared for \(x.cols) columns, group \(x.group)")
            precondition(p.planes <= Int(D2MOE_MWQ_MAX_PLANES), "MWQKernels.matmul: more than \(D2MOE_MWQ_MAX_PLANES) planes")
            blocks += m.rowBlocks
            work += m.rows * m.cols * x.tokens * p.planes / 16
            pointers += p.levels
        }
        guard blocks > 0, x.tokens > 0 else { return }
        let n = work < 32_768 ? 1 : min(pool.threadCount * 4, blocks)
        let per = (blocks + n - 1) / n
        // Every product's level pointers, flattened, for the C kernel.
        withUnsafeTemporaryAllocation(of: UnsafePointer<UInt8>?.self, capacity: pointers) { lv in
            var at = 0
            for p in products {
                for k in 0..<p.levels { lv[at + k] = p.matrix.levels[k].assumingMemoryBound(to: UInt8.self) }
                at += p.levels
            }
            let levelPointers = UnsafePointer(lv.baseAddress!)
            pool.parallelFor((blocks + per - 1) / per) { chunk in
                // Blocks [g0, g1) of the concatenated list, cut at the matrices' boundaries.
                let g0 = chunk * per, g1 = min(blocks, g0 + per)
                var first = 0, pointer = 0
                for p in products {
                    let m = p.matrix
                    let b0 = max(g0 - first, 0), b1 = min(g1 - first, m.rowBlocks)
                    if b0 < b1 {
                        switch (path, x.route) {
                        case (.avx2, .tables):
                            d2moe_mwq_matmul_avx2(x.tables, x.scales, x.sums, x.tokens, m.rows, m.cols, Int32(m.group),
                                                  levelPointers + pointer, Int32(m.baseBits), Int32(p.levels - 1), b0, b1, p.output)
                        case (.avx2, .gemm):
                            d2moe_mwq_gemm_avx2(x.integers, x.scales, x.tokens, m.rows, m.cols, Int32(m.group),
                                                levelPointers + pointer, Int32(m.baseBits), Int32(p.levels - 1), b0, b1, p.output)
                        case (.portable, .tables):
                            PortableMWQ.matmul(m, levels: p.levels, x, p.output, blocks: b0..<b1)
                        case (.portable, .gemm):
                            PortableMWQ.gemm(m, levels: p.levels, x, p.output, blocks: b0..<b1)
                        }
                    }
                    first += m.rowBlocks
                    pointer += p.levels
                }
            }
        }
    }
}

/// One product of a fused call (`MWQKernels.matmul(_:_:)`): output [tokens, matrix.rows] =
/// the prepared input times `matrix` served at `levels`.
public struct MWQProduct: @unchecked Sendable {
    public var matrix: MWQMatrixView
    public var levels: Int
    public var output: UnsafeMutablePointer<Float>
    /// Bit-planes read per weight: base bits plus sign levels.
    public var planes: Int { matrix.baseBits + levels - 1 }

    public init(_ matrix: MWQMatrixView, levels: Int, _ output: UnsafeMutablePointer<Float>) {
        self.matrix = matrix
        self.levels = levels
        self.output = output
    }
}

/// The table-lookup product in plain Swift, for processors without AVX2. Same integers, same
/// results up to float rounding.
enum PortableMWQ {
    static func prepare(_ x: UnsafePointer<Float>, _ p: MWQPreparedInput) {
        let g = p.group, G = p.cols / g
        var xq = [Int16](repeating: 0, count: g)
        for t in 0..<p.tokens {
            for j in 0..<G {
                let xg = x + t * p.cols + j * g
                var amax: Float = 0
                for c in 0..<g { amax = max(amax, abs(xg[c])) }
                let R = Float(MWQPreparedInput.range(group: g))
                let inv = amax > 0 ? R / amax : 0
                p.scales[t * G + j] = amax / R
                var total: Int32 = 0
                for c in 0..<g {
                    xq[c] = Int16((xg[c] * inv).rounded(.toNearestOrEven))
                    total += Int32(xq[c])
                }
                if let integers = p.integers {
                    for c in 0..<g { integers[t * p.cols + j * g + c] = xq[c] }
                }
                guard let tables = p.tables, let sums = p.sums else { continue }
                sums[t * G + j] = total
                let out = tables + t * p.cols * 8 + j * g * 8
                for c in 0..<(g / 4) {
                    for e in 0..<16 {
                        var v: Int16 = 0
                        for i in 0..<4 where e >> i & 1 == 1 { v += xq[4 * c + i] }
                        out[32 * c + e] = UInt8(truncatingIfNeeded: v)
                        out[32 * c + 16 + e] = UInt8(truncatingIfNeeded: v >> 8)
                    }
                }
            }
        }
    }

    static func matmul(_ m: MWQMatrixView, levels: Int, _ x: MWQPreparedInput, _ y: UnsafeMutablePointer<Float>,
                       blocks: Range<Int>) {
        let g = m.group, G = m.groups, Q = g / 4
        let tiles = (1...levels).map { MWQMatrixView.tileBytes(level: $0, group: g, baseBits: m.baseBits) }
        var sums = [Int32](repeating: 0, count: 32)
        // The masked sums of one plane's Q quads for 32 rows.
        func planeSums(_ plane: UnsafeRawPointer, _ table: UnsafePointer<UInt8>) {
            for i in 0..<32 { sums[i] = 0 }
            for c in 0..<Q {
                for i in 0..<16 {
                    let byte = plane.load(fromByteOffset: 16 * c + i, as: UInt8.self)
                    let lo = Int(byte & 0xF), hi = Int(byte >> 4)
                    sums[i] += Int32(Int16(table[32 * c + lo]) | Int16(Int8(bitPattern: table[32 * c + 16 + lo])) << 8)
                    sums[16 + i] += Int32(Int16(table[32 * c + hi]) | Int16(Int8(bitPattern: table[32 * c + 16 + hi])) << 8)
                }
            }
        }
        func half(_ p: UnsafeRawPointer, _ i: Int) -> Float { Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
        var out = [Float](repeating: 0, count: 32), group = out, cst = out, codes = sums
        for b in blocks {
            for t in 0..<x.tokens {
                for i in 0..<32 { out[i] = 0 }
                for j in 0..<G {
                    let table = UnsafePointer(x.tables! + t * x.cols * 8 + j * Q * 32)
                    let base = m.levels[0] + (b * G + j) * tiles[0]
                    for i in 0..<32 { codes[i] = 0 }
                    for p in 0..<m.baseBits {
                        planeSums(base + p * Q * 16, table)
                        for i in 0..<32 { codes[i] += sums[i] << Int32(p) }
                    }
                    let scalesAt = base + m.baseBits * Q * 16
                    for i in 0..<32 {
                        group[i] = half(scalesAt, i) * Float(codes[i])
                        cst[i] = half(scalesAt, 32 + i)
                    }
                    for k in 1..<levels {
                        let tile = m.levels[k] + (b * G + j) * tiles[k]
                        planeSums(tile, table)
                        for i in 0..<32 {
                            let sk = half(tile + Q * 16, i)
                            group[i] += 2 * sk * Float(sums[i])
                            cst[i] -= sk
                        }
                    }
                    let X = Float(x.sums![t * G + j]), scale = x.scales[t * G + j]
                    for i in 0..<32 { out[i] += (group[i] + cst[i] * X) * scale }
                }
                for i in 0..<32 where b * 32 + i < m.rows { y[t * m.rows + b * 32 + i] = out[i] }
            }
        }
    }
}

/// Plain, obviously-correct MWQ code: dequantize, then dot products. For tests, not hot paths.
public enum MWQReference {
    /// Ŵ at `levels` (1…m.maxLevel), rows × cols row-major, read bit by bit from the tiles.
    public static func dequantize(_ m: MWQMatrixView, levels: Int) -> [Float] {
        precondition((1...m.maxLevel).contains(levels), "MWQReference.dequantize: level \(levels) of \(m.maxLevel)")
        let G = m.groups, Q = m.group / 4
        func bit(_ tile: UnsafeRawPointer, plane: Int, row i: Int, within c: Int) -> Int {
            let byte = tile.load(fromByteOffset: (plane * Q + c / 4) * 16 + i % 16, as: UInt8.self)
            return Int(byte >> UInt8((i < 16 ? 0 : 4) + c % 4) & 1)
        }
        func half(_ tile: UnsafeRawPointer, _ at: Int) -> Float {
            Float(Float16(bitPattern: tile.loadUnaligned(fromByteOffset: at, as: UInt16.self)))
        }
        var w = [Float](repeating: 0, count: m.rows * m.cols)
        for r in 0..<m.rows {
            let b = r / 32, i = r % 32
            for c in 0..<m.cols {
                let j = c / m.group, within = c % m.group
                let base = m.levels[0] + (b * G + j) * MWQMatrixView.tileBytes(level: 1, group: m.group, baseBits: m.baseBits)
                var q = 0
                for p in 0..<m.baseBits { q |= bit(base, plane: p, row: i, within: within) << p }
                let planes = m.baseBits * Q * 16
                var v = half(base, planes + 2 * i) * Float(q) + half(base, planes + 64 + 2 * i)
                for k in 1..<levels {
                    let tile = m.levels[k] + (b * G + j) * MWQMatrixView.tileBytes(level: k + 1, group: m.group, baseBits: m.baseBits)
                    let sk = half(tile, Q * 16 + 2 * i)
                    v += bit(tile, plane: 0, row: i, within: within) == 1 ? sk : -sk
                }
                w[r * m.cols + c] = v
            }
        }
        return w
    }

    /// The activations the kernels multiply with: per group, round(x·R / amax)·amax / R with
    /// R = `MWQPreparedInput.range(group:)`.
    public static func quantizedActivations(_ x: [Float], cols: Int, group: Int) -> [Float] {
        var out = x
        let R = Float(MWQPreparedInput.range(group: group))
        for start in stride(from: 0, to: x.count, by: group) {
            let amax = x[start..<(start + group)].reduce(Float(0)) { max($0, abs($1)) }
            let inv = amax > 0 ? R / amax : 0
            for c in start..<(start + group) { out[c] = (x[c] * inv).rounded(.toNearestOrEven) * (amax / R) }
        }
        return out
    }

    /// y[t·rows + r] = Σ_c Ŵ[r, c]·x[t·cols + c] at `levels`, summed in double.
    public static func matmul(_ m: MWQMatrixView, levels: Int, _ x: UnsafePointer<Float>, tokens: Int,
                              _ y: UnsafeMutablePointer<Float>) {
        let w = dequantize(m, levels: levels)
        for t in 0..<tokens {
            for r in 0..<m.rows {
                var sum: Double = 0
                for c in 0..<m.cols { sum += Double(w[r * m.cols + c]) * Double(x[t * m.cols + c]) }
                y[t * m.rows + r] = Float(sum)
            }
        }
    }
}
