import AsyncHTTPClient
import D2MoE
import Foundation
import Testing

/// 500 malformed or hostile requests: every one gets a 4xx with an error body, the server stays up,
/// and a valid request afterwards succeeds.
@Suite(.serialized, .enabled(if: ServerPaths.haveModel, "SKIP: models/SmolLM2-135M-Instruct.Q4_1.gguf absent; run scripts/setup"))
struct ServerFuzzTests {
    /// Deterministic hostile bodies (seeded), each with the path it goes to.
    static func hostileRequests() -> [(path: String, body: [UInt8])] {
        var g = SeededGenerator(seed: 2026)
        var out: [(String, [UInt8])] = []
        let valid = [#"{"prompt": "Hello there", "max_tokens": 4, "temperature": 0.5, "stop": ["\n"]}"#,
                     #"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}"#]
        // Truncations: every strict prefix of a JSON object is invalid.
        for _ in 0..<150 {
            let v = Array(valid[Int.random(in: 0..<2, using: &g)].utf8)
            let cut = Int.random(in: 0..<v.count, using: &g)
            out.append((cut % 2 == 0 ? "/v1/completions" : "/v1/chat/completions", Array(v[..<cut])))
        }
        // Wrong types and values out of range, field by field.
        let fields = ["max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stream", "stop", "prompt", "n",
                      "model", "presence_penalty", "repeat_penalty", "stream_options"]
        let badValues = ["\"ten\"", "[1]", "{}", "true", "-1", "1e308", "1e400", "-1e400", "9223372036854775808", "18446744073709551616",
                         "0.5", "1e-400", "\"\"", "[[[]]]", "-0.000001"]
        for f in fields {
            for v in badValues {
                // Some of these are valid for some fields ("0.5" for temperature); keep only those that are not.
                if Self.acceptable(field: f, value: v) { continue }
                let prompt = f == "prompt" ? "" : #""prompt": "x", "#
                out.append(("/v1/completions", Array("{\(prompt)\"\(f)\": \(v)}".utf8)))
            }
        }
        // Invalid UTF-8 inside strings and as whole bodies.
        for i in 0..<40 {
            var b = Array(#"{"prompt": "ab"#.utf8)
            b += [[0xFF], [0xC3], [0xED, 0xA0, 0x80], [0xF8, 0x88, 0x80, 0x80, 0x80], [0x80]][i % 5]
            b += Array(#"cd", "max_tokens": 2}"#.utf8)
            out.append(("/v1/completions", b))
        }
        for _ in 0..<40 {
            out.append(("/v1/completions", (0..<Int.random(in: 1..<300, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }))
        }
        // Enormous max_tokens, negative temperature, bad messages, nesting bombs, too many stops, duplicate keys.
        for n in ["513", "1000000", "4294967296", "1e15", "-5"] {
            out.append(("/v1/completions", Array(#"{"prompt": "x", "max_tokens": \#(n)}"#.utf8)))
            out.append(("/v1/chat/completions", Array(#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": \#(n)}"#.utf8)))
        }
        for t in ["-0.1", "-1", "-1e10"] { out.append(("/v1/completions", Array(#"{"prompt": "x", "temperature": \#(t)}"#.utf8))) }
        for m in [#"[]"#, #"{}"#, #"[1]"#, #"[{"role": "user"}]"#, #"[{"content": "x"}]"#, #"[{"role": "user", "content": 5}]"#,
                  #"[{"role": "user", "content": [{"type": "image_url"}]}]"#, #""hi""#, "null"] {
            out.append(("/v1/chat/completions", Array(#"{"messages": \#(m)}"#.utf8)))
        }
        out.append(("/v1/completions", Array((String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)).utf8)))
        out.append(("/v1/completions", Array((#"{"prompt": "#.utf8) + Array(repeating: UInt8(ascii: "["), count: 5000))))
        out.append(("/v1/completions", Array(#"{"prompt": "x", "stop": [\#(Array(repeating: "\"a\"", count: 17).joined(separator: ","))]}"#.utf8)))
        out.append(("/v1/completions", Array(#"{"prompt": "x", "prompt": "y"}"#.utf8)))
        out.append(("/v1/completions", Array(#"{"prompt": [[1, 2], [3]]}"#.utf8)))
        out.append(("/v1/completions", Array(#"{"prompt": [99999999]}"#.utf8)))
        out.append(("/v1/completions", Array(#"{"prompt": [-3]}"#.utf8)))
        out.append(("/v1/completions", Array(#"{"prompt": "x", "echo": true}"#.utf8)))
        out.append(("/v1/completions", Array(#"{"prompt": "x", "logprobs": 5}"#.utf8)))
        out.append(("/v1/completions", Array(#"{"prompt": "x", "model": "other"}"#.utf8)))
        while out.count < 499 {
            let v = Array(valid[0].utf8)
            var b = v
            // Flipped bytes, kept when the result is no longer JSON (by the server's own parser).
            for _ in 0..<3 { b[Int.random(in: 0..<b.count, using: &g)] = UInt8.random(in: 0...127, using: &g) }
            if (try? JSONDocument.parse(b)) == nil { out.append(("/v1/completions", b)) }
        }
        // A 10 MB body.
        out.append(("/v1/completions", Array(#"{"prompt": ""#.utf8) + Array(repeating: UInt8(ascii: "a"), count: 10_000_000) + Array(#""}"#.utf8)))
        return out
    }

    /// Values that are legal for a field (so they are not hostile there).
    static func acceptable(field: String, value: String) -> Bool {
        let legal: Set<String> = [
            "temperature=0.5", "temperature=1e-400", "top_p=0.5", "top_k=1e-400", "min_p=0.5", "min_p=1e-400",
            "seed=-1", "seed=1e-400", "stream=true", "stop=\"ten\"", "stop=\"\"", "prompt=\"ten\"", "prompt=[1]",
            // An empty prompt is refused, but by the tokenizer's rules rather than the request's shape.
            "prompt=\"\"",
            "presence_penalty=-1", "presence_penalty=0.5", "presence_penalty=1e-400", "presence_penalty=-0.000001",
            "repeat_penalty=0.5", "stream_options={}",
        ]
        return legal.contains("\(field)=\(value)")
    }

    @Test func fiveHundredHostileRequestsAllGet4xxAndTheServerStaysUp() async throws {
        let requests = Self.hostileRequests()
        #expect(requests.count == 500)
        try await withServer { s in
            var statuses: [Int] = Array(repeating: 0, count: requests.count)
            var failures: [String] = []
            // Sixteen at a time.
            for start in stride(from: 0, to: requests.count, by: 16) {
                try await withThrowingTaskGroup(of: (Int, Int, String?).self) { group in
                    for i in start..<min(start + 16, requests.count) {
                        group.addTask {
                            do {
                                let r = try await HTTP.request(.POST, s.base + requests[i].path, body: requests[i].body)
                                return (i, r.status, r.errorMessage == nil ? "no error message: \(r.text.prefix(200))" : nil)
                            } catch {
                                return (i, -1, "client error: \(error)")
                            }
                        }
                    }
                    for try await (i, status, problem) in group {
                        statuses[i] = status
                        if let problem, !(400..<500).contains(status) || status == -1 { failures.append("#\(i): \(problem)") }
                        else if let problem, status != 413 { failures.append("#\(i): \(problem)") }
                    }
                }
            }
            let bad = statuses.enumerated().filter { !(400..<500).contains($0.element) }
            #expect(bad.isEmpty, "not 4xx: \(bad.prefix(10).map { "#\($0.offset) → \($0.element): \(String(decoding: requests[$0.offset].body.prefix(120), as: UTF8.self))" })")
            #expect(failures.isEmpty, "\(failures.prefix(10))")
            #expect(try await HTTP.get(s.base + "/health").status == 200)
            let ok = try await HTTP.post(s.base + "/v1/completions", json: #"{"prompt": "Hello", "max_tokens": 3}"#)
            #expect(ok.status == 200)
        }
    }
}
