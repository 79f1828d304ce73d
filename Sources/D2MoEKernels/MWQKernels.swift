import CD2MoEKernels

/// A read-only view of one MWQ ("Matryoshka weight quantization") matrix in its packed bit-plane
/// layout. The memory belongs to someone else (a mapped container, a buffer) and must outlive the
/// view.
///
/// The matrix W is `rows` × `cols`, cut into groups of `group` consecutive columns per row
/// (g = 32, 64 or 128; `cols` % g == 0), G = cols / g groups per row, n32 = g / 32 words per
/// group and plane. In every plane word, bit i (value 1 << i) of word w of group j belongs to
/// column j·g + w·32 + i.
///
/// - Level 1, the base: an unsigned code q ∈ [0, 2^b1) per weight (b1 = `baseBits`, 1…8), stored as
///   b1 bit-planes. `basePlanes` word ((r·G + j)·b1 + p)·n32 + w holds bit p (p = 0 the least
///   significant) of q for row r, group j. `baseScales` holds IEEE float16 pairs (s, m) at
///   2·(r·G + j) and 2·(r·G + j) + 1. Base value Ŵ1 = s·q + m.
/// - Sign levels 2, 3, …: `signPlanes[i]` and `signScales[i]` are level i + 2. Plane word
///   (r·G + j)·n32 + w with the same bit ↔ column mapping; bit 1 means +1, bit 0 means −1.
///   One float16 scale s_k per group at r·G + j. The level adds s_k·B.
/// - Served at level L (1…1 + signPlanes.count): Ŵ = Ŵ1 + Σ_{levels 2…L} s_k·B_k.
public struct MWQMatrixView: @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    /// Columns per group g: 32, 64 or 128.
    public let group: Int
    /// Bits b1 of the base code, 1…8.
    public let baseBits: Int
    /// The base planes, rows·G·b1·(g/32) words.
    public let basePlanes: UnsafePointer<UInt32>
    /// float16 (s, m) per row and group, 2·rows·G values.
    public let baseScales: UnsafePointer<UInt16>
    /// The sign planes of levels 2, 3, …, rows·G·(g/32) words each.
    public let signPlanes: [UnsafePointer<UInt32>]
    /// float16 s_k per row and group of levels 2, 3, …, rows·G values each.
    public let signScales: [UnsafePointer<UInt16>]

    public init(rows: Int, cols: Int, group: Int, baseBits: Int,
                basePlanes: UnsafePointer<UInt32>, baseScales: UnsafePointer<UInt16>,
                signPlanes: [UnsafePointer<UInt32>] = [], signScales: [UnsafePointer<UInt16>] = []) {
        precondition(rows >= 0 && cols >= 0, "MWQMatrixView: shape \(rows)x\(cols)")
        precondition([32, 64, 128].contains(group) && cols % group == 0,
                     "MWQMatrixView: group \(group) with \(cols) columns")
        precondition((1...8).contains(baseBits), "MWQMatrixView: \(baseBits) base bits")
        precondition(signPlanes.count == signScales.count, "MWQMatrixView: sign planes and scales differ in number")
        self.rows = rows
        self.cols = cols
        self.group = group
        self.baseBits = baseBits
        self.basePlanes = basePlanes
        self.baseScales = baseScales
        self.signPlanes = signPlanes
        self.signScales = signScales
    }

    /// Groups per row, G.
    public var groups: Int { cols / group }

    /// The highest level the view can serve: 1 + signPlanes.count.
    public var maxLevel: Int { 1 + signPlanes.count }

    /// Bytes a product at `levels` reads: planes and scales.
    public func byteCount(levels: Int) -> Int {
        let groupsTotal = rows * groups
        return groupsTotal * (baseBits * group / 8 + 4) + (levels - 1) * groupsTotal * (group / 8 + 2)
    }
}

/// Products with MWQ matrices on their packed planes (see `MWQMatrixView`), never dequantizing the
/// weights. With per-group input sums X_j = Σ_{c in group j} x_c and masked sums
/// S(plane) = Σ_{c: bit set} x_c, a group contributes
/// s·Σ_p 2^p·S(base plane p) + m·X_j + Σ_k s_k·(2·S(sign plane k) − X_j). `MWQReference` is the
/// plain version they are tested against.
public enum MWQKernels {
    /// into[t·G + j] = Σ_{c in group j} x[t·cols + c], G = cols / group: the X_j that `matmul`
    /// needs, computed once per token and shared by every matrix of that input.
    public static func groupSums(_ x: UnsafePointer<Float>, tokens: Int, cols: Int, group: Int,
                                 into: UnsafeMutablePointer<Float>) {
        precondition(group > 0 && cols % group == 0, "MWQKernels.groupSums: group \(group) with \(cols) columns")
        let groups = cols / group
        let raw = UnsafeRawPointer(x)
        for t in 0..<tokens {
            for j in 0..<groups {
                let start = t * cols + j * group
                var acc = SIMD8<Float>()
                var c = 0
                while c + 8 <= group {
                    acc += raw.loadUnaligned(fromByteOffset: (start + c) * 4, as: SIMD8<Float>.self)
                    c += 8
                }
                var s = acc.sum()
                while c < group { s += x[start + c]; c += 1 }
                into[t * groups + j] = s
            }
        }
    }

    /// y[t·rows + r] = Σ_c Ŵ[r, c]·x[t·cols + c] with Ŵ served at `levels` (1…m.maxLevel: the base
    /// and the first levels − 1 sign levels). x: [tokens, cols]; xsum: [tokens, G] from
    /// `groupSums`; y: [tokens, rows]. Rows are split over the pool's threads.
    public static func matmul(_ m: MWQMatrixView, levels: Int, _ x: UnsafePointer<Float>, xsum: UnsafePointer<Float>,
                              tokens: Int, _ y: UnsafeMutablePointer<Float>,
                              pool: ComputePool = .shared, path: KernelPath = .best) {
        precondition((1...m.maxLevel).contains(levels), "MWQKernels.matmul: level \(levels) of \(m.maxLevel)")
        precondition(path != .avx2 || KernelPath.best == .avx2, "MWQKernels.matmul: no AVX2 here")
        precondition(path != .avx2 || levels - 1 <= Int(D2MOE_MWQ_MAX_SIGN_LEVELS),
                     "MWQKernels.matmul: \(levels - 1) sign levels, the AVX2 kernel takes \(D2MOE_MWQ_MAX_SIGN_LEVELS)")
        guard m.rows > 0, tokens > 0 else { return }
        // As Kernels.matmul: chunks of rows, a multiple of 4, about 4 per thread; small products on
        // one thread. A weight bit costs about what a dense weight does.
        let work = m.rows * m.cols * tokens * (m.baseBits + levels - 1) / 4
        let chunks = work < 32_768 ? 1 : min(pool.threadCount * 4, max(1, m.rows / 16))
        let per = ((m.rows + chunks - 1) / chunks + 3) & ~3
        let n = (m.rows + per - 1) / per
        let signs = levels - 1
        switch path {
        case .avx2:
            // UnsafePointer and Optional<UnsafePointer> share a layout; the C side reads `signs` entries.
            m.signPlanes.withUnsafeBufferPointer { planes in
                m.signScales.withUnsafeBufferPointer { scales in
                    planes.withMemoryRebound(to: UnsafePointer<UInt32>?.self) { planes in
                        scales.withMemoryRebound(to: UnsafePointer<UInt16>?.self) { scales in
                            let sp = planes.baseAddress, ss = scales.baseAddress
                            pool.parallelFor(n) { chunk in
                                let r0 = chunk * per, r1 = min(m.rows, r0 + per)
                                d2moe_mwq_matmul_avx2(x, xsum, tokens, m.rows, m.cols, Int32(m.group),
                                                      m.basePlanes, m.baseScales, Int32(m.baseBits),
                                                      sp, ss, Int32(signs), r0, r1, y)
                            }
                        }
                    }
                }
            }
        case .portable:
            pool.parallelFor(n) { chunk in
                let r0 = chunk * per, r1 = min(m.rows, r0 + per)
                PortableMWQ.matmul(m, signs: signs, x, xsum: xsum, tokens: tokens, y, rows: r0..<r1)
            }
        }
    }
}

/// The masked-sum product in Swift SIMD, for processors without AVX2.
enum PortableMWQ {
    /// Σ of x[c] over the set bits of n32 words (32 columns each).
    @inline(__always)
    static func maskedSum(_ words: UnsafePointer<UInt32>, n32: Int, _ x: UnsafeRawPointer) -> Float {
        // Lane i of chunk b tests bit 8b + i. (`.==` and `replacing` lower to compare and blend;
        // a `.!=` mask here made the loop some 50 times slower.)
        let lane = SIMD8<UInt32>(1, 2, 4, 8, 16, 32, 64, 128)
        var acc = SIMD8<Float>()
        for w in 0..<n32 {
            let word = SIMD8<UInt32>(repeating: words[w])
            for b in 0..<4 {
                let bit = lane &<< UInt32(8 * b)
                let xv = x.loadUnaligned(fromByteOffset: (w * 32 + b * 8) * 4, as: SIMD8<Float>.self)
                acc += SIMD8<Float>().replacing(with: xv, where: word & bit .== bit)
            }
        }
        return acc.sum()
    }

    static func matmul(_ m: MWQMatrixView, signs: Int, _ x: UnsafePointer<Float>, xsum: UnsafePointer<Float>,
                       tokens: Int, _ y: UnsafeMutablePointer<Float>, rows: Range<Int>) {
        let groups = m.groups, g = m.group, n32 = g / 32, b1 = m.baseBits, cols = m.cols
        let signPlanes = Array(m.signPlanes.prefix(signs)), signScales = Array(m.signScales.prefix(signs))
        for r in rows {
            for t in 0..<tokens {
                var total: Float = 0
                for j in 0..<groups {
                    let gi = r * groups + j
                    let xg = UnsafeRawPointer(x + t * cols + j * g)
                    let xj = xsum[t * groups + j]
                    let s = Float(Float16(bitPattern: m.baseScales[2 * gi]))
                    let mm = Float(Float16(bitPattern: m.baseScales[2 * gi + 1]))
                    var q: Float = 0
                    for p in 0..<b1 {
                        q += Float(1 << p) * maskedSum(m.basePlanes + (gi * b1 + p) * n32, n32: n32, xg)
                    }
                    var sum = s * q + mm * xj
                    for k in 0..<signs {
                        let sk = Float(Float16(bitPattern: signScales[k][gi]))
                        sum += sk * (2 * maskedSum(signPlanes[k] + gi * n32, n32: n32, xg) - xj)
                    }
                    total += sum
                }
                y[t * m.rows + r] = total
            }
        }
    }
}

/// Plain, obviously-correct MWQ code: dequantize, then dot products. For tests, not hot paths.
public enum MWQReference {
    /// Ŵ at `levels` (1…m.maxLevel), rows × cols row-major.
    public static func dequantize(_ m: MWQMatrixView, levels: Int) -> [Float] {
        precondition((1...m.maxLevel).contains(levels), "MWQReference.dequantize: level \(levels) of \(m.maxLevel)")
        let groups = m.groups, n32 = m.group / 32
        var w = [Float](repeating: 0, count: m.rows * m.cols)
        for r in 0..<m.rows {
            for c in 0..<m.cols {
                let j = c / m.group, within = c % m.group
                let word = within / 32, bit = UInt32(within % 32)
                let gi = r * groups + j
                var q = 0
                for p in 0..<m.baseBits {
                    let planeWord = m.basePlanes[(gi * m.baseBits + p) * n32 + word]
                    q |= Int((planeWord >> bit) & 1) << p
                }
                let s = Float(Float16(bitPattern: m.baseScales[2 * gi]))
                let offset = Float(Float16(bitPattern: m.baseScales[2 * gi + 1]))
                var v = s * Float(q) + offset
                for k in 0..<(levels - 1) {
                    let set = (m.signPlanes[k][gi * n32 + word] >> bit) & 1 == 1
                    let sk = Float(Float16(bitPattern: m.signScales[k][gi]))
                    v += set ? sk : -sk
                }
                w[r * m.cols + c] = v
            }
        }
        return w
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
