import CD2MoEKernels

/// The `.gemm` route of MWQ products (`MWQPreparedInput.Route`): for long inputs each block of rows
/// is requantized to int16 once per call and multiplied with the same int16 activations the table
/// route uses, which is faster than the table lookup once a product has a few dozen tokens.
///
/// The rule, per row r and group j at the served level (s, m the base scale and offset, s_k the
/// sign levels' scales, all float16 in the tiles):
/// - c = m − Σ_k s_k (k in order), and the level's values lie in [lo, hi] with lo = c +
///   min(0, s·(2^b1 − 1)) + Σ_k min(0, 2·s_k) and hi the same with max: B = max(|lo|, |hi|),
///   inv = R / B (0 where B = 0) with R = 32750 (`D2MOE_MWQ_GEMM_RANGE`), ws = B / R;
/// - integer coefficients, each rounded half to even from float: C = c·inv, A_p = (s·inv)·2^p for
///   base bit p, S_k = (2·s_k)·inv for sign level k; wq = C + Σ A_p over the set base bits + Σ S_k
///   over the set sign bits — within (planes + 1)/2 of Ŵ·inv, so inside int16 by R's margin;
/// - y = Σ_j (ws·xs)·Σ_{c in j} wq·xq, accumulated over j by fused multiply-add, with xq, xs the
///   prepared activations (`MWQPreparedInput`).
struct MWQGemmRule {
    static let range = Float(D2MOE_MWQ_GEMM_RANGE)
    let scale: Float
    /// A_p for base bit p, then S_k for sign level k.
    let coefficients: [Int]
    let start: Int

    /// The rule for row i of the block whose tiles at the served levels are `tiles` (level 1 first).
    init(tiles: [UnsafeRawPointer], row i: Int, group g: Int, baseBits b1: Int) {
        let q = g / 4
        func half(_ p: UnsafeRawPointer, _ at: Int) -> Float { Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: at, as: UInt16.self))) }
        func round(_ v: Float) -> Int { Int(v.rounded(.toNearestOrEven)) }
        let s = half(tiles[0], b1 * q * 16 + 2 * i)
        var c = half(tiles[0], b1 * q * 16 + 64 + 2 * i)
        var twice = [Float]()
        for tile in tiles.dropFirst() {
            let sk = half(tile, q * 16 + 2 * i)
            c -= sk
            twice.append(sk + sk)
        }
        let span = s * Float((1 << b1) - 1)
        var lo = c + min(span, 0), hi = c + max(span, 0)
        for t in twice {
            lo += min(t, 0)
            hi += max(t, 0)
        }
        let bound = max(abs(lo), abs(hi))
        let inv: Float = bound > 0 ? Self.range / bound : 0
        scale = bound / Self.range
        let sinv = s * inv
        coefficients = (0..<b1).map { round(sinv * Float(1 << $0)) } + twice.map { round($0 * inv) }
        start = round(c * inv)
    }

    /// wq of a weight whose bits (base bits, then sign bits) are `bits`, bit i for plane i.
    func weight(bits: Int) -> Int16 {
        var v = start
        for (i, k) in coefficients.enumerated() where bits >> i & 1 == 1 { v += k }
        return Int16(v)
    }

    /// The bits of each weight of row i, quad c of a group: plane p's nibble is bits 4p…4p+3.
    static func nibbles(tiles: [UnsafeRawPointer], planes: Int, baseBits b1: Int, q: Int, row i: Int, quad c: Int) -> Int {
        var nibbles = 0
        for p in 0..<planes {
            let tile = p < b1 ? tiles[0] : tiles[p - b1 + 1]
            let byte = tile.load(fromByteOffset: ((p < b1 ? p : 0) * q + c) * 16 + i % 16, as: UInt8.self)
            nibbles |= Int(i < 16 ? byte & 0xF : byte >> 4) << (4 * p)
        }
        return nibbles
    }

    /// Bits of column t (0…3) out of `nibbles`.
    static func bits(_ nibbles: Int, planes: Int, column t: Int) -> Int {
        var bits = 0
        for p in 0..<planes { bits |= (nibbles >> (4 * p + t) & 1) << p }
        return bits
    }
}

extension MWQReference {
    /// The int16 weights wq [rows × cols] and scales ws [rows × G] of the `.gemm` route at `levels`.
    public static func gemmWeights(_ m: MWQMatrixView, levels: Int) -> (values: [Int16], scales: [Float]) {
        precondition((1...m.maxLevel).contains(levels), "MWQReference.gemmWeights: level \(levels) of \(m.maxLevel)")
        let G = m.groups, Q = m.group / 4, planes = m.baseBits + levels - 1
        var values = [Int16](repeating: 0, count: m.rows * m.cols), scales = [Float](repeating: 0, count: m.rows * G)
        for r in 0..<m.rows {
            let b = r / 32, i = r % 32
            for j in 0..<G {
                let tiles = (1...levels).map { m.levels[$0 - 1] + (b * G + j) * MWQMatrixView.tileBytes(level: $0, group: m.group, baseBits: m.baseBits) }
                let rule = MWQGemmRule(tiles: tiles, row: i, group: m.group, baseBits: m.baseBits)
                scales[r * G + j] = rule.scale
                for c in 0..<Q {
                    let nibbles = MWQGemmRule.nibbles(tiles: tiles, planes: planes, baseBits: m.baseBits, q: Q, row: i, quad: c)
                    for t in 0..<4 {
                        values[r * m.cols + j * m.group + 4 * c + t] = rule.weight(bits: MWQGemmRule.bits(nibbles, planes: planes, column: t))
                    }
                }
            }
        }
        return (values, scales)
    }

    /// The `.gemm` route's product, its integer sums exact, the rest in double: wq·ws from
    /// `gemmWeights` times the activations' integers and scales (`MWQPreparedInput.range`).
    public static func gemmMatmul(_ m: MWQMatrixView, levels: Int, _ x: [Float], tokens: Int) -> [Float] {
        let (wq, ws) = gemmWeights(m, levels: levels)
        let g = m.group, G = m.groups, R = Float(MWQPreparedInput.range(group: g))
        var xq = [Int](repeating: 0, count: x.count), xs = [Float](repeating: 0, count: tokens * G)
        for at in 0..<(tokens * G) {
            let amax = x[(at * g)..<((at + 1) * g)].reduce(Float(0)) { max($0, abs($1)) }
            let inv = amax > 0 ? R / amax : 0
            xs[at] = amax / R
            for c in (at * g)..<((at + 1) * g) { xq[c] = Int((x[c] * inv).rounded(.toNearestOrEven)) }
        }
        var y = [Float](repeating: 0, count: tokens * m.rows)
        for t in 0..<tokens {
            for r in 0..<m.rows {
                var sum: Double = 0
                for j in 0..<G {
                    var dot = 0
                    for c in (j * g)..<((j + 1) * g) { dot += Int(wq[r * m.cols + c]) * xq[t * m.cols + c] }
                    sum += Double(ws[r * G + j]) * Double(xs[t * G + j]) * Double(dot)
                }
                y[t * m.rows + r] = Float(sum)
            }
        }
        return y
    }
}

extension PortableMWQ {
    static func gemm(_ m: MWQMatrixView, levels: Int, _ x: MWQPreparedInput, _ y: UnsafeMutablePointer<Float>,
                     blocks: Range<Int>) {
        guard let xq = x.integers else { preconditionFailure("PortableMWQ.gemm: the input was not prepared for the gemm route") }
        let g = m.group, G = m.groups, Q = g / 4, planes = m.baseBits + levels - 1
        var wq = [Int16](repeating: 0, count: 32 * m.cols), ws = [Float](repeating: 0, count: 32 * G)
        for b in blocks {
            let rowsHere = min(32, m.rows - b * 32)
            for j in 0..<G {
                let tiles = (1...levels).map { m.levels[$0 - 1] + (b * G + j) * MWQMatrixView.tileBytes(level: $0, group: g, baseBits: m.baseBits) }
                for i in 0..<rowsHere {
                    let rule = MWQGemmRule(tiles: tiles, row: i, group: g, baseBits: m.baseBits)
                    ws[i * G + j] = rule.scale
                    for c in 0..<Q {
                        let nibbles = MWQGemmRule.nibbles(tiles: tiles, planes: planes, baseBits: m.baseBits, q: Q, row: i, quad: c)
                        for t in 0..<4 { wq[i * m.cols + j * g + 4 * c + t] = rule.weight(bits: MWQGemmRule.bits(nibbles, planes: planes, column: t)) }
                    }
                }
            }
            for t in 0..<x.tokens {
                for i in 0..<rowsHere {
                    var acc: Float = 0
                    for j in 0..<G {
                        var dot: Int32 = 0
                        for c in (j * g)..<((j + 1) * g) { dot &+= Int32(wq[i * m.cols + c]) * Int32(xq[t * m.cols + c]) }
                        acc = acc.addingProduct(Float(dot), ws[i * G + j] * x.scales[t * G + j])
                    }
                    y[t * m.rows + b * 32 + i] = acc
                }
            }
        }
    }
}
