import Foundation
import D2MoEKernels

/// One weight matrix in Matryoshka weight quantization (DESIGN §3.2): a b₁-bit asymmetric base
/// plus one-bit residual sign levels, per group of `group` consecutive inputs in a row.
///
/// In memory (`levels`), for R rows, G = cols/group groups, n32 = group/32 words:
/// - level 1 `planes`: UInt32 word ((r·G + j)·b₁ + p)·n32 + w holds bit p of the codes of columns
///   j·group + w·32 + i (bit i); the code q ∈ [0, 2^b₁) gives Ŵ₁ = s·q + m; `scales`: float16
///   pairs (s, m) at index 2·(r·G + j);
/// - each sign level k ≥ 2: `planes` word (r·G + j)·n32 + w, bit 1 = +1, bit 0 = −1 (B_k);
///   `scales`: float16 s_k at index r·G + j. The level adds s_k·B_k.
///
/// On disk (`levelBytes`) each level is in the tiled layout the kernels read in place
/// (`MWQMatrixView`: blocks of 32 rows, planes as nibbles of 32 rows per 4 columns, each tile's
/// scales after its planes): level 1 is ⌈R/32⌉·G·(4·b₁·group + 128) bytes, a sign level
/// ⌈R/32⌉·G·(4·group + 64) — for R a multiple of 32, b₁ + (32 + 16·(k − 1))/group + (k − 1) bits
/// per weight at level k, e.g. 4.375 for the V1 preset {2,3,4} at level 3 with group 128.
public struct MWQMatrix: Sendable, Equatable {
    public let rows: Int
    public let cols: Int
    public let group: Int
    public let baseBits: Int
    /// Level 1 first, then one entry per sign level.
    public var levels: [MWQLevel]

    public struct MWQLevel: Sendable, Equatable {
        /// Bit planes (see the layout above).
        public var planes: [UInt32]
        /// float16 bit patterns.
        public var scales: [UInt16]
    }

    public var groupsPerRow: Int { cols / group }

    /// Bytes of level `k` (0-based) on disk.
    public func storedByteCount(_ k: Int) -> Int {
        k == 0 ? Self.baseByteCount(rows: rows, cols: cols, group: group, baseBits: baseBits) : Self.signByteCount(rows: rows, cols: cols, group: group)
    }

    /// Bytes of level 1 of a matrix of this shape, on disk.
    public static func baseByteCount(rows: Int, cols: Int, group: Int, baseBits: Int) -> Int {
        MWQMatrixView.levelByteCount(level: 1, rows: rows, cols: cols, group: group, baseBits: baseBits)
    }

    /// Bytes of one sign level of a matrix of this shape, on disk.
    public static func signByteCount(rows: Int, cols: Int, group: Int) -> Int {
        MWQMatrixView.levelByteCount(level: 2, rows: rows, cols: cols, group: group, baseBits: 1)
    }

    public init(rows: Int, cols: Int, group: Int, baseBits: Int, levels: [MWQLevel]) {
        self.rows = rows
        self.cols = cols
        self.group = group
        self.baseBits = baseBits
        self.levels = levels
    }

    /// Quantizes row-major `weights` [rows × cols] to base `baseBits` plus `signLevels` residual
    /// levels. Base: per-group min/max (s = (max − min)/(2^b₁ − 1), m = min); sign levels: the
    /// mean |residual| of the group. Scales are rounded to float16 before the codes and residuals
    /// are computed, so what is stored is exactly what was optimised.
    public static func quantize(_ weights: UnsafeBufferPointer<Float>, rows: Int, cols: Int, group: Int,
                                baseBits: Int, signLevels: Int, search: Bool = true,
                                importance: [Float]? = nil) throws -> MWQMatrix {
        guard [32, 64, 128, 256].contains(group) else { throw FormatError("MWQ", "group size \(group) must be 32, 64, 128 or 256") }
        guard cols % group == 0 else { throw FormatError("MWQ", "\(cols) columns are not a multiple of the group size \(group)") }
        guard (1...8).contains(baseBits), signLevels >= 0, baseBits + signLevels <= 16 else {
            throw FormatError("MWQ", "base bits \(baseBits) with \(signLevels) sign levels is out of range")
        }
        guard weights.count == rows * cols else { throw FormatError("MWQ", "\(weights.count) weights for \(rows)×\(cols)") }
        if let importance, importance.count != cols { throw FormatError("MWQ", "\(importance.count) importance weights for \(cols) columns") }
        let G = cols / group, n32 = group / 32
        var base = MWQLevel(planes: [UInt32](repeating: 0, count: rows * G * baseBits * n32), scales: [UInt16](repeating: 0, count: rows * G * 2))
        var signs = (0..<signLevels).map { _ in MWQLevel(planes: [UInt32](repeating: 0, count: rows * G * n32), scales: [UInt16](repeating: 0, count: rows * G)) }
        let maxCode = Float((1 << baseBits) - 1)
        // Rows are independent: blocks of rows run on the compute pool, each writing only its own
        // rows' words and scales (a 64-expert layer took ~2 s per expert on one core).
        let blockRows = 16, blocks = (rows + blockRows - 1) / blockRows
        let unit = [Float](repeating: 1, count: group)
        base.planes.withUnsafeMutableBufferPointer { basePlanes in
            base.scales.withUnsafeMutableBufferPointer { baseScales in
                let signPlanes = signs.indices.map { k in UnsafeMutableBufferPointer<UInt32>.allocate(capacity: rows * G * n32) }
                let signScales = signs.indices.map { k in UnsafeMutableBufferPointer<UInt16>.allocate(capacity: rows * G) }
                defer {
                    for k in signs.indices {
                        signs[k].planes = Array(signPlanes[k]); signs[k].scales = Array(signScales[k])
                        signPlanes[k].deallocate(); signScales[k].deallocate()
                    }
                }
                for k in signs.indices { signPlanes[k].initialize(repeating: 0); signScales[k].initialize(repeating: 0) }
                ComputePool.shared.parallelFor(blocks) { b in
                    var residual = [Float](repeating: 0, count: group)
                    for r in (b * blockRows)..<min(rows, (b + 1) * blockRows) {
                        for j in 0..<G {
                            let w = UnsafeBufferPointer(rebasing: weights[(r * cols + j * group)..<(r * cols + (j + 1) * group)])
                            let h = importance.map { Array($0[(j * group)..<((j + 1) * group)]) } ?? unit
                            let (s, m) = fitBase(w, h, maxCode: maxCode, search: search, signLevels: signLevels)
                            let sf = float(s), mf = float(m)
                            baseScales[2 * (r * G + j)] = s
                            baseScales[2 * (r * G + j) + 1] = m
                            let planeBase = (r * G + j) * baseBits * n32
                            for c in 0..<group {
                                let q = sf > 0 ? min(max(((w[c] - mf) / sf).rounded(), 0), maxCode) : 0
                                let code = UInt32(q)
                                for p in 0..<baseBits where code >> p & 1 == 1 {
                                    basePlanes[planeBase + p * n32 + c / 32] |= 1 << (c % 32)
                                }
                                residual[c] = w[c] - (sf * q + mf)
                            }
                            let hSum = max(h.reduce(0, +), .leastNormalMagnitude)
                            for k in 0..<signLevels {
                                // The (importance-weighted) mean |R|: the least-squares scale for B = sign(R).
                                var meanAbs: Float = 0
                                for c in 0..<group { meanAbs += h[c] * abs(residual[c]) }
                                let sk = half(meanAbs / hSum), skf = float(sk)
                                signScales[k][r * G + j] = sk
                                for c in 0..<group {
                                    if residual[c] >= 0 {
                                        signPlanes[k][(r * G + j) * n32 + c / 32] |= 1 << (c % 32)
                                        residual[c] -= skf
                                    } else {
                                        residual[c] += skf
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return MWQMatrix(rows: rows, cols: cols, group: group, baseBits: baseBits, levels: [base] + signs)
    }

    /// Base scale and offset (float16 bits) of one group. Plain min/max, or (`search`) the best of
    /// eleven ranges shrunk toward the centre, each also refitted by least squares on its codes.
    /// "Best" balances every level: the sum over levels of log squared error, since a base that
    /// only minimises its own error leaves residuals the sign levels fit worse (measured: 4-bit
    /// perplexity rose while 2-bit fell).
    /// `h`: each column's importance (the calibration inputs' mean square, DESIGN §3.2.3's
    /// ‖WX − ŴX‖² under a diagonal approximation; all ones without calibration).
    static func fitBase(_ w: UnsafeBufferPointer<Float>, _ h: [Float], maxCode: Float, search: Bool, signLevels: Int) -> (UInt16, UInt16) {
        var lo = w[0], hi = w[0]
        for v in w { lo = min(lo, v); hi = max(hi, v) }
        let plain = (half((hi - lo) / maxCode), half(lo))
        guard search, hi > lo else { return plain }
        var r = [Float](repeating: 0, count: w.count)
        let hSum = max(h.reduce(0, +), .leastNormalMagnitude)
        func error(_ s: UInt16, _ m: UInt16) -> Float {
            let sf = float(s), mf = float(m)
            guard sf > 0, sf.isFinite, mf.isFinite else { return .infinity }
            var e: Float = 0
            for (i, v) in w.enumerated() {
                let q = min(max(((v - mf) / sf).rounded(), 0), maxCode)
                r[i] = v - (sf * q + mf)
                e += h[i] * r[i] * r[i]
            }
            var total = log(e + 1e-30)
            for _ in 0..<signLevels {
                var meanAbs: Float = 0
                for i in r.indices { meanAbs += h[i] * abs(r[i]) }
                let sk = float(half(meanAbs / hSum))
                var ek: Float = 0
                for i in r.indices { r[i] += r[i] >= 0 ? -sk : sk; ek += h[i] * r[i] * r[i] }
                total += log(ek + 1e-30)
            }
            return total
        }
        var best = plain, bestError = error(plain.0, plain.1)
        let centre = (hi + lo) / 2, range = hi - lo
        for step in 0...10 {
            let alpha = 1 - Float(step) * 0.05
            let l = centre - alpha * range / 2, s0 = alpha * range / maxCode
            // Codes for this range, then the least-squares (s, m) for those codes.
            var sq: Float = 0, sqq: Float = 0, sw: Float = 0, sqw: Float = 0, n: Float = 0
            for (i, v) in w.enumerated() {
                let q = min(max(((v - l) / s0).rounded(), 0), maxCode)
                sq += h[i] * q; sqq += h[i] * q * q; sw += h[i] * v; sqw += h[i] * q * v; n += h[i]
            }
            let det = n * sqq - sq * sq
            guard det > 0 else { continue }
            let s = (n * sqw - sq * sw) / det, m = (sw - s * sq) / n
            for candidate in [(half(s0), half(l)), (half(s), half(m))] {
                let e = error(candidate.0, candidate.1)
                if e < bestError { bestError = e; best = candidate }
            }
        }
        return best
    }

    /// The weights served at `level` (1 = base only), row-major — the plain reference decoding.
    public func dequantize(level: Int) -> [Float] {
        precondition(level >= 1 && level <= levels.count)
        let G = groupsPerRow, n32 = group / 32
        var out = [Float](repeating: 0, count: rows * cols)
        for r in 0..<rows {
            for j in 0..<G {
                let s = MWQMatrix.float(levels[0].scales[2 * (r * G + j)]), m = MWQMatrix.float(levels[0].scales[2 * (r * G + j) + 1])
                for c in 0..<group {
                    var q: UInt32 = 0
                    for p in 0..<baseBits { q |= (levels[0].planes[((r * G + j) * baseBits + p) * n32 + c / 32] >> (c % 32) & 1) << p }
                    var v = s * Float(q) + m
                    for k in 1..<level {
                        let sk = MWQMatrix.float(levels[k].scales[r * G + j])
                        v += levels[k].planes[(r * G + j) * n32 + c / 32] >> (c % 32) & 1 == 1 ? sk : -sk
                    }
                    out[r * cols + j * group + c] = v
                }
            }
        }
        return out
    }

    /// Serialises level `k` (0-based) as stored on disk: the tiled layout.
    public func levelBytes(_ k: Int) -> [UInt8] {
        MWQTiles.encode(planes: levels[k].planes, planesPerGroup: k == 0 ? baseBits : 1, scales: levels[k].scales,
                        scalesPerGroup: k == 0 ? 2 : 1, rows: rows, cols: cols, group: group)
    }

    /// Parses level `k` (0-based) from its stored bytes.
    public static func level(_ k: Int, from bytes: UnsafeRawBufferPointer, rows: Int, cols: Int, group: Int, baseBits: Int) throws -> MWQLevel {
        let expected = k == 0 ? baseByteCount(rows: rows, cols: cols, group: group, baseBits: baseBits) : signByteCount(rows: rows, cols: cols, group: group)
        guard bytes.count == expected else { throw FormatError("MWQ", "level \(k + 1) is \(bytes.count) bytes, expected \(expected)") }
        let (planes, scales) = MWQTiles.decode(bytes, planesPerGroup: k == 0 ? baseBits : 1, scalesPerGroup: k == 0 ? 2 : 1,
                                               rows: rows, cols: cols, group: group)
        return MWQLevel(planes: planes, scales: scales)
    }

    static func half(_ f: Float) -> UInt16 { Float16(f).bitPattern }
    static func float(_ h: UInt16) -> Float { Float(Float16(bitPattern: h)) }
}
