import AsyncHTTPClient
import D2MoE
import D2MoEServer
import Foundation
import Testing

/// The real server on a loopback port, talked to with a real HTTP client (AsyncHTTPClient), over
/// the real SmolLM2 model.
@Suite(.serialized, .enabled(if: ServerPaths.haveModel, "SKIP: models/SmolLM2-135M-Instruct.Q4_1.gguf absent; run scripts/setup"))
struct ServerTests {
    let prompt = "The capital of France is"

    @Test func completionMatchesTheEngineAndCountsUsage() async throws {
        let expected = try await engineGreedy(prompt: prompt, maxTokens: 12)
        try await withServer { s in
            let r = try await HTTP.post(s.base + "/v1/completions",
                                        json: #"{"model": "smollm2", "prompt": "\#(prompt)", "max_tokens": 12, "temperature": 0}"#)
            #expect(r.status == 200, "\(r.text)")
            let o = try r.json()
            #expect(o["object"] as? String == "text_completion")
            let choice = try #require((o["choices"] as? [[String: Any]])?.first)
            #expect(choice["text"] as? String == expected)
            #expect(["stop", "length"].contains(choice["finish_reason"] as? String ?? ""))
            let usage = try #require(o["usage"] as? [String: Int])
            let promptTokens = try SharedEngine.get().tokenizer.encode(prompt, addSpecial: true, parseSpecial: false).count
            #expect(usage["prompt_tokens"] == promptTokens)
            #expect((1...12).contains(usage["completion_tokens"] ?? 0))
            #expect(usage["total_tokens"] == promptTokens + (usage["completion_tokens"] ?? 0))
        }
    }

    @Test func chatUsesTheModelsTemplate() async throws {
        let messages = [ChatMessage(role: "system", content: "You are brief."), ChatMessage(role: "user", content: "Name a color.")]
        let expected = try await engineGreedy(messages: messages, maxTokens: 10)
        try await withServer { s in
            let body = #"{"messages": [{"role": "system", "content": "You are brief."}, {"role": "user", "content": [{"type": "text", "text": "Name a color."}]}], "max_tokens": 10, "temperature": 0}"#
            let r = try await HTTP.post(s.base + "/v1/chat/completions", json: body)
            #expect(r.status == 200, "\(r.text)")
            let o = try r.json()
            #expect(o["object"] as? String == "chat.completion")
            let message = try #require(((o["choices"] as? [[String: Any]])?.first)?["message"] as? [String: Any])
            #expect(message["role"] as? String == "assistant")
            #expect(message["content"] as? String == expected)
            #expect(!expected.isEmpty)
        }
    }

    @Test func streamedChunksArriveEarlyAndConcatenateToTheWholeReply() async throws {
        try await withServer { s in
            let body = #"{"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "seed": 7}"#
            let whole = try await HTTP.post(s.base + "/v1/completions", json: body)
            let expected = try #require((try whole.json()["choices"] as? [[String: Any]])?.first?["text"] as? String)
            let streamed = try await HTTP.stream(s.base + "/v1/completions",
                                                 json: body.replacingOccurrences(of: "}", with: #", "stream": true, "stream_options": {"include_usage": true}}"#))
            #expect(streamed.status == 200)
            #expect(streamed.events.last == "[DONE]")
            let chunks = try streamed.events.dropLast().map(eventJSON)
            let texts = chunks.compactMap { ($0["choices"] as? [[String: Any]])?.first?["text"] as? String }
            #expect(texts.joined() == expected)
            // Chunks came in separate reads, the first well before the end.
            #expect(streamed.parts.count >= 4, "\(streamed.parts.count) body parts")
            #expect(streamed.partTimes.first! < streamed.partTimes.last!)
            let finish = chunks.compactMap { ($0["choices"] as? [[String: Any]])?.first?["finish_reason"] as? String }
            #expect(finish.count == 1)
            let usage = try #require(chunks.last?["usage"] as? [String: Int])
            #expect(usage["completion_tokens"] == (try whole.json()["usage"] as? [String: Int])?["completion_tokens"])

            let chat = try await HTTP.stream(s.base + "/v1/chat/completions",
                                             json: #"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0, "stream": true}"#)
            let deltas = try chat.events.dropLast().map(eventJSON).compactMap { ($0["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any] }
            #expect(deltas.first?["role"] as? String == "assistant")
            let text = deltas.compactMap { $0["content"] as? String }.joined()
            let expectedChat = try await engineGreedy(messages: [ChatMessage(role: "user", content: "Hi")], maxTokens: 8)
            #expect(text == expectedChat)
            #expect(chat.events.last == "[DONE]")
        }
    }

    @Test func modelsHealthAndMetrics() async throws {
        try await withServer { s in
            let models = try await HTTP.get(s.base + "/v1/models").json()
            let ids = (models["data"] as? [[String: Any]])?.compactMap { $0["id"] as? String }
            #expect(ids == ["smollm2"])
            #expect(try await HTTP.get(s.base + "/health").status == 200)
            _ = try await HTTP.post(s.base + "/v1/completions", json: #"{"prompt": "Hello", "max_tokens": 3}"#)
            let metrics = try await HTTP.get(s.base + "/metrics")
            #expect(metrics.status == 200)
            for name in ["d2moe_requests_total", "d2moe_generated_tokens_total", "d2moe_time_to_first_token_seconds_bucket",
                         "d2moe_token_latency_seconds_bucket", "d2moe_batch_size", "d2moe_queue_length"] {
                #expect(metrics.text.contains(name), "\(name) missing from /metrics")
            }
            let generated = metrics.text.split(separator: "\n").first { $0.hasPrefix("d2moe_generated_tokens_total ") }
            #expect(generated.flatMap { Double($0.split(separator: " ").last!) } ?? 0 >= 1)
        }
    }

    @Test func badRequestsGetOpenAIErrors() async throws {
        try await withServer { s in
            let url = s.base + "/v1/completions"
            let cases: [(String, Int, String)] = [
                (#"{"prompt": "x", "#, 400, "not valid JSON"),
                (#"[1, 2]"#, 400, "JSON object"),
                (#"{"prompt": "x", "max_tokens": "ten"}"#, 400, "max_tokens"),
                (#"{"prompt": "x", "max_tokens": 0}"#, 400, "max_tokens"),
                (#"{"prompt": "x", "max_tokens": 100000000}"#, 400, "max_tokens"),
                (#"{"prompt": "x", "temperature": -1}"#, 400, "temperature"),
                (#"{"prompt": 5}"#, 400, "prompt"),
                (#"{"max_tokens": 4}"#, 400, "prompt"),
                (#"{"prompt": "x", "model": "gpt-4"}"#, 400, "does not exist"),
                (#"{"prompt": "x", "n": 2}"#, 400, "n = 1"),
                (#"{"prompt": "x", "stream": "yes"}"#, 400, "stream"),
            ]
            for (body, status, words) in cases {
                let r = try await HTTP.post(url, json: body)
                #expect(r.status == status, "\(body) → \(r.status) \(r.text)")
                #expect(r.errorMessage?.contains(words) == true, "\(body) → \(r.text)")
            }
            // A prompt longer than the context (512 tokens).
            let long = "[" + Array(repeating: "42", count: 600).joined(separator: ",") + "]"
            let r = try await HTTP.post(url, json: #"{"prompt": \#(long), "max_tokens": 4}"#)
            #expect(r.status == 400)
            #expect(((try r.json()["error"] as? [String: Any])?["code"] as? String) == "context_length_exceeded")
            let chat = try await HTTP.post(s.base + "/v1/chat/completions", json: #"{"messages": [{"role": "wizard", "content": "x"}]}"#)
            #expect(chat.status == 400 && chat.errorMessage?.contains("role") == true)
            let big = try await HTTP.post(url, json: #"{"prompt": ""# + String(repeating: "a", count: 2 << 20) + #""}"#)
            #expect(big.status == 413)
            #expect(try await HTTP.get(s.base + "/v1/nothing").status == 404)
            // Still serving.
            #expect(try await HTTP.post(url, json: #"{"prompt": "Hi", "max_tokens": 2}"#).status == 200)
        }
    }

    @Test func apiKeyIsRequiredWhenSet() async throws {
        try await withServer(configure: { $0.apiKey = "sekret" }) { (s: RunningServer) async throws in
            let url = s.base + "/v1/completions", body = #"{"prompt": "Hi", "max_tokens": 2}"#
            #expect(try await HTTP.post(url, json: body).status == 401)
            #expect(try await HTTP.post(url, json: body, headers: [("Authorization", "Bearer wrong")]).status == 401)
            #expect(try await HTTP.post(url, json: body, headers: [("Authorization", "Bearer sekret")]).status == 200)
            #expect(try await HTTP.get(s.base + "/health").status == 200)
        }
    }

    @Test func aFullQueueAnswers429WithRetryAfter() async throws {
        var limits = SchedulerLimits()
        limits.maxBatch = 1
        limits.maxQueue = 0
        try await withServer(limits: limits) { s in
            let url = s.base + "/v1/completions"
            // Holds the only slot until its stream is read to the end.
            try await confirmation { saw429 in
                _ = try await HTTP.stream(url, json: #"{"prompt": "Count: one, two,", "max_tokens": 40, "stream": true}"#) { part in
                    guard part == 2 else { return }
                    let r = try await HTTP.post(url, json: #"{"prompt": "Hi", "max_tokens": 2}"#)
                    #expect(r.status == 429, "\(r.text)")
                    #expect(r.header("Retry-After") == "1")
                    if r.status == 429 { saw429() }
                }
            }
            #expect(try await HTTP.post(url, json: #"{"prompt": "Hi", "max_tokens": 2}"#).status == 200)
        }
    }

    @Test func aFailingModelStepFailsOnlyItsRequest() async throws {
        // Request 1 (the second submitted) fails in every forward pass it is part of.
        try await withServer(scheduler: { $0.stepFault = { ids in if ids.contains(1) { throw ServerTestError("injected fault") } } }) { s in
            let url = s.base + "/v1/completions"
            let body = #"{"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0}"#
            let expected = try await engineGreedy(prompt: "Once upon a time", maxTokens: 20)
            var failedStatus = 0
            let streamed = try await HTTP.stream(url, json: body.replacingOccurrences(of: "}", with: #", "stream": true}"#)) { part in
                if part == 2 { failedStatus = try await HTTP.post(url, json: #"{"prompt": "Hi", "max_tokens": 4}"#).status }
            }
            #expect(failedStatus == 500)
            let text = try streamed.events.dropLast().map(eventJSON).compactMap { ($0["choices"] as? [[String: Any]])?.first?["text"] as? String }.joined()
            #expect(text == expected)
            #expect(try await HTTP.post(url, json: #"{"prompt": "Hi", "max_tokens": 2}"#).status == 200)
        }
    }

    @Test func aClientThatDisconnectsFreesItsSlot() async throws {
        var limits = SchedulerLimits()
        limits.maxBatch = 1
        try await withServer(limits: limits) { s in
            let url = s.base + "/v1/completions"
            let reader = Task {
                _ = try await HTTP.stream(url, json: #"{"prompt": "A long story:", "max_tokens": 480, "stream": true}"#) { part in
                    if part == 3 { throw CancellationError() }
                }
            }
            _ = await reader.result
            // The 480-token request would hold the only slot for many seconds; it must be gone at once.
            var running = 1
            for _ in 0..<100 where running > 0 {
                try await Task.sleep(nanoseconds: 50_000_000)
                running = s.server.scheduler.snapshot.running
            }
            #expect(running == 0)
            let r = try await HTTP.post(url, json: #"{"prompt": "Hi", "max_tokens": 3}"#)
            #expect(r.status == 200)

            // The same for a non-streaming request whose client goes away.
            let waiting = Task { try await HTTP.post(url, json: #"{"prompt": "A long story:", "max_tokens": 480}"#) }
            try await Task.sleep(nanoseconds: 500_000_000)
            waiting.cancel()
            _ = await waiting.result
            running = 1
            for _ in 0..<100 where running > 0 {
                try await Task.sleep(nanoseconds: 50_000_000)
                running = s.server.scheduler.snapshot.running
            }
            #expect(running == 0)
        }
    }

    @Test func gracefulShutdownFinishesRunningRequests() async throws {
        let engine = try SharedEngine.get()
        var config = ServerConfiguration(modelName: "smollm2")
        config.port = 0
        let server = OpenAIServer(scheduler: BatchScheduler(engine: engine), configuration: config)
        let (ports, c) = AsyncStream<Int>.makeStream()
        let task = Task { try await server.run(signals: [], onListening: { c.yield($0); c.finish() }) }
        var it = ports.makeAsyncIterator()
        let port = try #require(await it.next())
        let url = "http://127.0.0.1:\(port)/v1/completions"
        let streamed = try await HTTP.stream(url, json: #"{"prompt": "Once upon a time", "max_tokens": 30, "stream": true}"#) { part in
            if part == 2 { Task { await server.shutdown() } }
        }
        #expect(streamed.events.last == "[DONE]", "\(streamed.events.suffix(2))")
        try await task.value
        #expect(!canConnect(port: port), "the port still accepts connections after shutdown")
    }

    @Test func sigtermStopsTheServeCommandAndItExitsZero() async throws {
        let exe = ServerPaths.executable
        try #require(FileManager.default.fileExists(atPath: exe.path), "the d2moe executable is not built at \(exe.path)")
        let process = Process()
        process.executableURL = exe
        process.arguments = ["serve", "--model", ServerPaths.smolLM2, "--port", "0", "--ctx", "256"]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        // "d2moe: serving NAME on http://127.0.0.1:PORT ..."
        var line = ""
        while !line.contains("\n") {
            let d = out.fileHandleForReading.availableData
            if d.isEmpty { break }
            line += String(decoding: d, as: UTF8.self)
        }
        let port = try #require(line.components(separatedBy: "127.0.0.1:").dropFirst().first.flatMap { Int($0.prefix { $0.isNumber }) }, "\(line)")
        let url = "http://127.0.0.1:\(port)/v1/completions"
        let streamed = try await HTTP.stream(url, json: #"{"prompt": "Once upon a time", "max_tokens": 24, "stream": true}"#) { part in
            if part == 2 { kill(process.processIdentifier, SIGTERM) }
        }
        #expect(streamed.events.last == "[DONE]")
        process.waitUntilExit()
        #expect(process.terminationReason == .exit)
        #expect(process.terminationStatus == 0)
    }
}
