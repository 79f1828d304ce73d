import ArgumentParser
import D2MoE
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One row of a `d2moe bench` sweep.
struct SweepRow: Codable {
    var budget: String
    var policy: String
    var result: SpeedBenchmark.Result
}

/// One configuration of a sweep: a --policy preset, or an ablation step on top of one.
struct SweepConfig: Sendable {
    var name: String
    var policy: String?
    /// Run on the --copies file instead of --model.
    var copies = false
    var adjust: @Sendable (inout ExpertStreaming) -> Void = { _ in }

    /// The paper's Fig. 14, each step adding one mechanism to the one before, ending at d2moe.
    static let ablation: [SweepConfig] = [
        SweepConfig(name: "abl:copies", policy: "matryoshka-free", copies: true),
        SweepConfig(name: "abl:+mwq", policy: nil) { onDemand(&$0) },
        SweepConfig(name: "abl:+hebf", policy: nil) { onDemand(&$0); $0.order = .hebf; $0.eviction = "reuse" },
        SweepConfig(name: "abl:+resid", policy: nil) { onDemand(&$0); $0.order = .hebf; $0.eviction = "reuse"; $0.lowLevelShare = 0.5 },
        SweepConfig(name: "abl:+prefetch", policy: "d2moe"),
    ]

    /// matryoshka-free's reading (id order, LRU, nothing kept, no prefetch) on a nested file: its
    /// preset's settings without its name, which makes loading refuse nested files.
    private static func onDemand(_ s: inout ExpertStreaming) {
        try! s.apply(policy: "matryoshka-free")
        s.policy = nil
    }
}

extension ModelBench {
    /// Every (budget, configuration, request count), the model loaded once per (budget, configuration).
    func sweep(budgets: [String?], policies: [String?], requests counts: [Int]) throws {
        var rows: [SweepRow] = []
        // --ablation alone runs just its steps; with --policies (or --policy) the presets too.
        var configs = ablation && self.policies == nil && modelOptions.policy == nil ? []
            : policies.map { entry -> SweepConfig in
                // NAME-nopf: the preset with its prefetch off (a replayed trace's next-layer
                // prediction comes from a synthetic router, so prefetching reads the wrong experts).
                var name = entry
                let noPrefetch = name?.hasSuffix("-nopf") == true
                if noPrefetch { name = String(name!.dropLast(5)) }
                var config = SweepConfig(name: entry ?? "custom", policy: name, copies: name == "matryoshka-free")
                // smoe@A: SMoE substitution at α = A.
                if let n = name, n.hasPrefix("smoe@"), let a = Double(n.dropFirst(5)) {
                    config.policy = "smoe"
                    config.adjust = { $0.alpha = a }
                }
                if noPrefetch {
                    let before = config.adjust
                    config.adjust = { before(&$0); $0.prefetch = false }
                }
                return config
            }
        if ablation { configs += SweepConfig.ablation }
        if configs.contains(where: \.copies), copies == nil {
            fail("matryoshka-free and the ablation's first step run on separate copies: give --copies FILE (synth or quantize --scheme mfree)")
        }
        if !json {
            print("budget      policy            requests    pp t/s    tg t/s  RSS after load  run peak  expert MiB read/step  hit ratio per level | subst skip /token·layer | pipeline eff. pp tg")
        }
        for budget in budgets {
            for config in configs {
                rows += measure(config, budget: budget, requests: counts)
                // The engine just measured is gone, but glibc keeps its freed heap in the arena of
                // the thread that loaded it; hand it back so the next row's RSS is its own.
                releaseFreedHeap()
            }
        }
        if ablation, !json { printAblation(rows) }
        if json { printJSON(rows) }
        if let csv { try Self.writeCSV(rows, to: csv) }
        if let svg { try SweepPlot.write(rows, to: svg, title: "\((modelOptions.model as NSString).lastPathComponent): generation tokens/s against the memory budget") }
    }

    /// The paper's Fig. 14 as text: per budget and request count, each step's generation
    /// tokens/s and its gain over the step before.
    private func printAblation(_ rows: [SweepRow]) {
        let steps = SweepConfig.ablation.map(\.name)
        print("ablation (generation tokens/s, × the step before):")
        for budget in Set(rows.map(\.budget)).sorted() {
            for n in Set(rows.map(\.result.requests)).sorted() {
                let tps = steps.map { step in rows.first { $0.budget == budget && $0.policy == step && $0.result.requests == n }?.result.generationTokensPerSecond }
                guard tps.allSatisfy({ $0 != nil }) else { continue }
                var line = "  \(budget), \(n) request\(n == 1 ? "" : "s"):"
                for (i, step) in steps.enumerated() {
                    line += String(format: " %@ %.2f", step, tps[i]!)
                    if i > 0 { line += String(format: " (×%.2f)", tps[i]! / max(tps[i - 1]!, 1e-9)) }
                }
                print(line + String(format: "; total ×%.2f", tps.last!! / max(tps.first!!, 1e-9)))
            }
        }
    }

    /// glibc's malloc_trim (not in Swift's Glibc module, so looked up), a no-op elsewhere.
    private func releaseFreedHeap() {
        #if canImport(Glibc)
        typealias Trim = @convention(c) (Int) -> Int32
        if let f = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") { _ = unsafeBitCast(f, to: Trim.self)(0) }
        #endif
    }

    /// One configuration at one budget, every request count, on one loaded engine.
    private func measure(_ config: SweepConfig, budget: String?, requests counts: [Int]) -> [SweepRow] {
        var options = modelOptions
        options.memoryBudget = budget
        options.policy = config.policy
        if config.copies, let copies { options.model = copies }
        let engine: Engine
        do { engine = try options.load(adjust: config.adjust); try attachHooks(engine, requests: counts.max()!) } catch { fail(String(describing: error)) }
        var rows: [SweepRow] = []
        for n in counts {
            let r: SpeedBenchmark.Result
            do {
                r = try SpeedBenchmark.run(engine: engine, promptTokens: promptTokens, generateTokens: generateTokens,
                                           repetitions: repetitions, requests: n, text: try benchText(engine),
                                           driver: SpeedBenchmark.Driver(rawValue: driver)!)
            } catch { fail(String(describing: error)) }
            let row = SweepRow(budget: r.experts == nil ? "resident" : (budget ?? "resident"), policy: config.name, result: r)
            rows.append(row)
            if !json { print(Self.line(row, steps: max(1, repetitions) * (generateTokens + (promptTokens > 0 ? 1 : 0)))) }
        }
        return rows
    }

    static func line(_ row: SweepRow, steps: Int) -> String {
        let r = row.result
        let read = r.experts.map { Double($0.total.bytesRead) / 1_048_576 / Double(steps) } ?? 0
        let hits = r.experts.map { e in
            "[" + e.hitRatio.map { String(format: "%.2f", $0) }.joined(separator: ", ") + "]"
                + String(format: " | %.3f %.3f | %.2f %.2f", e.perToken(e.total.misses.substituted), e.perToken(e.total.misses.skipped),
                         e.promptSteps.efficiency, e.generationSteps.efficiency)
        } ?? "-"
        return row.budget.padding(toLength: 12, withPad: " ", startingAt: 0) + row.policy.padding(toLength: 16, withPad: " ", startingAt: 0)
            + String(format: "%10d %9.1f %9.2f %15@ %9@ %21.1f  %@", r.requests, r.promptTokensPerSecond, r.generationTokensPerSecond,
                     formatBytes(r.startResidentBytes), formatBytes(r.runPeakResidentBytes), read, hits)
    }

    static func writeCSV(_ rows: [SweepRow], to path: String) throws {
        var text = "budget,policy,requests,budget_bytes,pp_tokens_per_s,tg_tokens_per_s,resident_after_load_bytes,run_peak_rss_bytes,kv_cache_bytes,expert_bytes_read,pieces_read,hit_ratio_per_level,average_bits,io_busy_s,compute_busy_s,wall_s,hit_ratio,bytes_read_per_token,substituted_per_token_layer,downgraded_per_token_layer,skipped_per_token_layer,prediction_accuracy,prompt_step_efficiency,generation_step_efficiency,generation_step_io_busy_s,generation_step_compute_busy_s,generation_step_wall_s\n"
        for row in rows {
            let r = row.result, e = r.experts, t = e?.total
            let fields: [String] = [
                row.budget, row.policy, "\(r.requests)", "\(e?.budgetBytes ?? 0)",
                String(format: "%.3f", r.promptTokensPerSecond), String(format: "%.3f", r.generationTokensPerSecond),
                "\(r.startResidentBytes)", "\(r.runPeakResidentBytes)", "\(r.kvCacheBytes)", "\(t?.bytesRead ?? 0)",
                "\(t?.piecesRead.reduce(0, +) ?? 0)", (e?.hitRatio.map { String(format: "%.4f", $0) } ?? []).joined(separator: " "),
                String(format: "%.3f", e?.averageBits ?? 0), String(format: "%.4f", t?.ioBusy ?? 0),
                String(format: "%.4f", t?.computeBusy ?? 0), String(format: "%.4f", t?.wall ?? 0),
                String(format: "%.4f", e?.overallHitRatio ?? 0), String(format: "%.0f", e?.bytesReadPerToken ?? 0),
                String(format: "%.4f", e.map { $0.perToken($0.total.misses.substituted) } ?? 0),
                String(format: "%.4f", e.map { $0.perToken($0.total.misses.downgraded) } ?? 0),
                String(format: "%.4f", e.map { $0.perToken($0.total.misses.skipped) } ?? 0),
                String(format: "%.4f", e?.predictionAccuracy ?? 0),
                String(format: "%.4f", e?.promptSteps.efficiency ?? 0), String(format: "%.4f", e?.generationSteps.efficiency ?? 0),
                String(format: "%.4f", e?.generationSteps.ioBusy ?? 0), String(format: "%.4f", e?.generationSteps.computeBusy ?? 0),
                String(format: "%.4f", e?.generationSteps.wall ?? 0),
            ]
            text += fields.joined(separator: ",") + "\n"
        }
        guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8)) else { throw ValidationError("cannot write \(path)") }
    }
}

/// A line plot of tokens/s against budget (the paper's Fig. 10), as a standalone SVG.
enum SweepPlot {
    static func write(_ rows: [SweepRow], to path: String, title: String) throws {
        let streamed = rows.filter { $0.result.experts != nil }
        let series = Dictionary(grouping: streamed) { "\($0.policy), \($0.result.requests) req" }
        let budgets = streamed.map { Double($0.result.experts!.budgetBytes) / 1_073_741_824 }
        let speeds = rows.map(\.result.generationTokensPerSecond)
        let xMax = max(budgets.max() ?? 1, 0.001) * 1.05, yMax = max(speeds.max() ?? 1, 0.001) * 1.1
        let w = 720.0, h = 440.0, left = 70.0, right = 220.0, top = 40.0, bottom = 50.0
        func x(_ v: Double) -> Double { left + v / xMax * (w - left - right) }
        func y(_ v: Double) -> Double { h - bottom - v / yMax * (h - top - bottom) }
        let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        svg += "<text x=\"\(left)\" y=\"22\" font-size=\"14\">\(escape(title))</text>\n"
        svg += "<line x1=\"\(left)\" y1=\"\(y(0))\" x2=\"\(x(xMax))\" y2=\"\(y(0))\" stroke=\"black\"/><line x1=\"\(left)\" y1=\"\(y(0))\" x2=\"\(left)\" y2=\"\(y(yMax))\" stroke=\"black\"/>\n"
        for i in 0...5 {
            let xv = xMax * Double(i) / 5, yv = yMax * Double(i) / 5
            svg += "<text x=\"\(x(xv))\" y=\"\(h - bottom + 18)\" text-anchor=\"middle\">\(String(format: "%.2f", xv))</text>\n"
            svg += "<text x=\"\(left - 8)\" y=\"\(y(yv) + 4)\" text-anchor=\"end\">\(String(format: "%.1f", yv))</text>\n"
            svg += "<line x1=\"\(left)\" y1=\"\(y(yv))\" x2=\"\(x(xMax))\" y2=\"\(y(yv))\" stroke=\"#ddd\"/>\n"
        }
        svg += "<text x=\"\((left + x(xMax)) / 2)\" y=\"\(h - 12)\" text-anchor=\"middle\">memory budget (GiB)</text>\n"
        svg += "<text x=\"16\" y=\"\((top + h - bottom) / 2)\" transform=\"rotate(-90 16 \((top + h - bottom) / 2))\" text-anchor=\"middle\">generation tokens/s</text>\n"
        for (i, name) in series.keys.sorted().enumerated() {
            let c = colors[i % colors.count]
            let points = series[name]!.map { (Double($0.result.experts!.budgetBytes) / 1_073_741_824, $0.result.generationTokensPerSecond) }.sorted { $0.0 < $1.0 }
            svg += "<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"2\" points=\"" + points.map { "\(x($0.0)),\(y($0.1))" }.joined(separator: " ") + "\"/>\n"
            for p in points { svg += "<circle cx=\"\(x(p.0))\" cy=\"\(y(p.1))\" r=\"3\" fill=\"\(c)\"/>\n" }
            svg += "<rect x=\"\(w - right + 15)\" y=\"\(top + Double(i) * 18)\" width=\"12\" height=\"12\" fill=\"\(c)\"/><text x=\"\(w - right + 32)\" y=\"\(top + Double(i) * 18 + 10)\">\(escape(name))</text>\n"
        }
        // Models held wholly in memory: dashed horizontal lines.
        for (i, row) in rows.filter({ $0.result.experts == nil }).enumerated() {
            let v = row.result.generationTokensPerSecond
            svg += "<line x1=\"\(left)\" y1=\"\(y(v))\" x2=\"\(x(xMax))\" y2=\"\(y(v))\" stroke=\"#555\" stroke-dasharray=\"6 4\"/>"
            svg += "<text x=\"\(w - right + 15)\" y=\"\(top + Double(series.count + i) * 18 + 10)\">--- \(escape(row.policy)), \(row.result.requests) req (all resident)</text>\n"
        }
        svg += "</svg>\n"
        guard FileManager.default.createFile(atPath: path, contents: Data(svg.utf8)) else { throw ValidationError("cannot write \(path)") }
    }

    private static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}

