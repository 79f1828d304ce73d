import Foundation

extension MWQMatrix {
    /// MWQ with GPTQ-style error compensation (DESIGN §3.2.3): columns are quantized in order, a
    /// group's base and sign scales are fitted on its weights as updated so far, and each
    /// column's error at level `compensateLevel` (default: the top level) is pushed onto the
    /// columns not yet quantized through the upper Cholesky factor of the inverse Hessian.
    ///
    /// `hessian`: XᵀX of the calibration inputs, cols × cols row-major (any positive scale).
    public static func quantizeGPTQ(_ weights: UnsafeBufferPointer<Float>, rows: Int, cols: Int, group: Int, baseBits: Int,
                                    signLevels: Int, hessian: [Double], damping: Double = 0.01,
                                    compensateLevel: Int? = nil) throws -> MWQMatrix {
        guard hessian.count == cols * cols else { throw FormatError("MWQ", "a \(hessian.count)-element Hessian for \(cols) columns") }
        // Validates the rest and allocates the levels (their contents are replaced below).
        var out = try quantize(weights, rows: rows, cols: cols, group: group, baseBits: baseBits, signLevels: signLevels, search: false)
        let level = min(max(compensateLevel ?? (signLevels + 1), 1), signLevels + 1)
        var w = Array(weights)
        var h = hessian
        let diagonal = (0..<cols).map { h[$0 * cols + $0] }
        let mean = diagonal.reduce(0, +) / Double(cols)
        for c in 0..<cols {
            if diagonal[c] <= 0 {  // a column no calibration input reached: its weights cannot matter
                h[c * cols + c] = 1
                for r in 0..<rows { w[r * cols + c] = 0 }
            }
            h[c * cols + c] += damping * max(mean, 1e-12)
        }
        guard let u = upperCholeskyOfInverse(h, n: cols) else {
            throw FormatError("MWQ", "the calibration Hessian is not positive definite even after damping")
        }
        let G = cols / group, n32 = group / 32
        let maxCode = Float((1 << baseBits) - 1)
        for i in out.levels.indices {
            for k in out.levels[i].planes.indices { out.levels[i].planes[k] = 0 }
        }
        let importance = diagonal.map { Float(max($0, 0)) }
        var scales = [[Float]](repeating: [], count: rows)  // per row: s, m, s_2, …
        var error = [Float](repeating: 0, count: rows)
        w.withUnsafeMutableBufferPointer { wp in
            for j in 0..<G {
                let c0 = j * group
                let hGroup = Array(importance[c0..<(c0 + group)])
                let hSum = max(hGroup.reduce(0, +), .leastNormalMagnitude)
                // Fit this group's scales on the current (compensated) weights.
                for r in 0..<rows {
                    let slice = UnsafeBufferPointer(rebasing: wp[(r * cols + c0)..<(r * cols + c0 + group)])
                    let (s, m) = fitBase(slice, hGroup, maxCode: maxCode, search: true, signLevels: signLevels)
                    out.levels[0].scales[2 * (r * G + j)] = s
                    out.levels[0].scales[2 * (r * G + j) + 1] = m
                    let sf = float(s), mf = float(m)
                    var residual = slice.map { v in v - (sf * (sf > 0 ? min(max(((v - mf) / sf).rounded(), 0), maxCode) : 0) + mf) }
                    var rowScales = [sf, mf]
                    for k in 0..<signLevels {
                        var meanAbs: Float = 0
                        for c in 0..<group { meanAbs += hGroup[c] * abs(residual[c]) }
                        let sk = half(meanAbs / hSum)
                        out.levels[k + 1].scales[r * G + j] = sk
                        let skf = float(sk)
                        rowScales.append(skf)
                        for c in 0..<group { residual[c] += residual[c] >= 0 ? -skf : skf }
                    }
                    scales[r] = rowScales
                }
                // Quantize the group's columns one by one, compensating the columns after them.
                for c in c0..<(c0 + group) {
                    let local = c - c0
                    for r in 0..<rows {
                        let v = wp[r * cols + c]
                        let sf = scales[r][0], mf = scales[r][1]
                        let q = sf > 0 ? min(max(((v - mf) / sf).rounded(), 0), maxCode) : 0
                        let code = UInt32(q)
                        for p in 0..<baseBits where code >> p & 1 == 1 {
                            out.levels[0].planes[((r * G + j) * baseBits + p) * n32 + local / 32] |= 1 << (local % 32)
                        }
                        var approx = sf * q + mf
                        var atLevel = approx
                        for k in 0..<signLevels {
                            let sk = scales[r][2 + k]
                            if v - approx >= 0 {
                                out.levels[k + 1].planes[(r * G + j) * n32 + local / 32] |= 1 << (local % 32)
                                approx += sk
                            } else {
                                approx -= sk
                            }
                            if k + 2 == level { atLevel = approx }
                        }
                        error[r] = (v - (level == 1 ? sf * q + mf : atLevel)) / Float(u[c * cols + c])
                    }
                    guard c + 1 < cols else { continue }
                    let row = u[(c * cols + c + 1)..<((c + 1) * cols)].map { Float($0) }
                    row.withUnsafeBufferPointer { up in
                        for r in 0..<rows where error[r] != 0 {
                            let e = error[r]
                            let dst = wp.baseAddress! + r * cols + c + 1
                            for i in 0..<up.count { dst[i] -= e * up[i] }
                        }
                    }
                }
            }
        }
        return out
    }

    /// U with UᵀU = H⁻¹ (upper triangular), n × n row-major, or nil when H is not positive definite.
    static func upperCholeskyOfInverse(_ h: [Double], n: Int) -> [Double]? {
        guard var l = cholesky(h, n: n) else { return nil }
        // L⁻¹ in place (lower triangular), then H⁻¹ = L⁻ᵀ L⁻¹.
        l.withUnsafeMutableBufferPointer { a in
            for i in 0..<n {
                a[i * n + i] = 1 / a[i * n + i]
                for j in 0..<i {
                    var s = 0.0
                    for k in j..<i { s += a[i * n + k] * a[k * n + j] }
                    a[i * n + j] = -s * a[i * n + i]
                }
            }
        }
        var inverse = [Double](repeating: 0, count: n * n)
        l.withUnsafeBufferPointer { li in
            inverse.withUnsafeMutableBufferPointer { inv in
                for i in 0..<n {
                    for j in 0...i {
                        var s = 0.0
                        for k in i..<n { s += li[k * n + i] * li[k * n + j] }
                        inv[i * n + j] = s
                        inv[j * n + i] = s
                    }
                }
            }
        }
        guard let l2 = cholesky(inverse, n: n) else { return nil }
        var u = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0...i { u[j * n + i] = l2[i * n + j] } }
        return u
    }

    /// Lower-triangular L with LLᵀ = A, or nil.
    static func cholesky(_ a: [Double], n: Int) -> [Double]? {
        var l = [Double](repeating: 0, count: n * n)
        let ok = l.withUnsafeMutableBufferPointer { lp -> Bool in
            for j in 0..<n {
                var d = a[j * n + j]
                for k in 0..<j { d -= lp[j * n + k] * lp[j * n + k] }
                guard d > 0 else { return false }
                let root = d.squareRoot()
                lp[j * n + j] = root
                for i in (j + 1)..<max(j + 1, n) {
                    var s = a[i * n + j]
                    for k in 0..<j { s -= lp[i * n + k] * lp[j * n + k] }
                    lp[i * n + j] = s / root
                }
            }
            return true
        }
        return ok ? l : nil
    }
}
