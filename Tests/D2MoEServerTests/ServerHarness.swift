import AsyncHTTPClient
import D2MoE
import D2MoEServer
import Foundation
import NIOCore
import NIOHTTP1
import Testing

/// Where the real model is (fetched by scripts/setup) and the built `d2moe` executable.
enum ServerPaths {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static var smolLM2: String {
        (ProcessInfo.processInfo.environment["D2MOE_MODELS_DIR"].map { URL(fileURLWithPath: $0) }
            ?? packageRoot.appendingPathComponent("models")).appendingPathComponent("SmolLM2-135M-Instruct.Q4_1.gguf").path
    }
    static var haveModel: Bool { FileManager.default.fileExists(atPath: smolLM2) }
    static var executable: URL { URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("d2moe") }
}

/// One SmolLM2 engine shared by every server test (a 512-token context keeps caches small).
enum SharedEngine {
    static let engine: Engine? = try? Engine.load(path: ServerPaths.smolLM2, options: LoadOptions(contextLength: 512))
    static func get() throws -> Engine { try #require(engine, "SmolLM2 did not load") }
}

/// A running in-process server on a free loopback port.
struct RunningServer {
    let server: OpenAIServer
    let port: Int
    let task: Task<Void, any Error>
    var base: String { "http://127.0.0.1:\(port)" }

    /// Graceful shutdown, then waits for `run` to return.
    func stop() async throws {
        await server.shutdown()
        try await task.value
    }
}

/// Starts a server, runs `body`, stops the server (also when `body` throws).
func withServer<T>(limits: SchedulerLimits = .init(), scheduler: ((BatchScheduler) -> Void)? = nil,
                   configure: (inout ServerConfiguration) -> Void = { _ in },
                   _ body: (RunningServer) async throws -> T) async throws -> T {
    let engine = try SharedEngine.get()
    var config = ServerConfiguration(modelName: "smollm2")
    config.port = 0
    configure(&config)
    let sched = BatchScheduler(engine: engine, limits: limits)
    scheduler?(sched)
    let server = OpenAIServer(scheduler: sched, configuration: config)
    let (ports, portContinuation) = AsyncStream<Int>.makeStream()
    let task = Task { try await server.run(signals: [], onListening: { portContinuation.yield($0); portContinuation.finish() }) }
    var iterator = ports.makeAsyncIterator()
    guard let port = await iterator.next() else { throw ServerTestError("the server did not start") }
    let running = RunningServer(server: server, port: port, task: task)
    do {
        let result = try await body(running)
        try await running.stop()
        return result
    } catch {
        try? await running.stop()
        throw error
    }
}

struct ServerTestError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A response read whole.
struct HTTPReply {
    let status: Int
    let headers: [(String, String)]
    let body: [UInt8]
    var text: String { String(decoding: body, as: UTF8.self) }
    func json() throws -> [String: Any] {
        guard let o = try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else { throw ServerTestError("not an object: \(text)") }
        return o
    }
    func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
    /// The `error.message` of an OpenAI error body.
    var errorMessage: String? { ((try? json())?["error"] as? [String: Any])?["message"] as? String }
}

enum HTTP {
    static func request(_ method: HTTPMethod, _ url: String, body: [UInt8]? = nil, headers: [(String, String)] = [],
                        timeout: Int64 = 120) async throws -> HTTPReply {
        var req = HTTPClientRequest(url: url)
        req.method = method
        for (k, v) in headers { req.headers.add(name: k, value: v) }
        if let body {
            if !headers.contains(where: { $0.0.lowercased() == "content-type" }) { req.headers.add(name: "Content-Type", value: "application/json") }
            req.body = .bytes(ByteBuffer(bytes: body))
        }
        let response = try await HTTPClient.shared.execute(req, timeout: .seconds(timeout))
        let buffer = try await response.body.collect(upTo: 64 << 20)
        return HTTPReply(status: Int(response.status.code), headers: response.headers.map { ($0.name, $0.value) },
                         body: Array(buffer.readableBytesView))
    }

    static func post(_ url: String, json: String, headers: [(String, String)] = []) async throws -> HTTPReply {
        try await request(.POST, url, body: Array(json.utf8), headers: headers)
    }

    static func get(_ url: String, headers: [(String, String)] = []) async throws -> HTTPReply {
        try await request(.GET, url, headers: headers)
    }

    /// A streamed response: the body parts as they arrived, and the `data:` payloads of the events.
    struct Stream {
        var status: Int
        var parts: [String] = []
        var events: [String] = []
        var partTimes: [Double] = []
    }

    static func stream(_ url: String, json: String, headers: [(String, String)] = [],
                       onPart: (Int) async throws -> Void = { _ in }) async throws -> Stream {
        var req = HTTPClientRequest(url: url)
        req.method = .POST
        req.headers.add(name: "Content-Type", value: "application/json")
        for (k, v) in headers { req.headers.add(name: k, value: v) }
        req.body = .bytes(ByteBuffer(string: json))
        let response = try await HTTPClient.shared.execute(req, timeout: .seconds(120))
        var s = Stream(status: Int(response.status.code))
        let start = Date()
        var pending = ""
        for try await buffer in response.body {
            let piece = String(buffer: buffer)
            s.parts.append(piece)
            s.partTimes.append(Date().timeIntervalSince(start))
            pending += piece
            while let r = pending.range(of: "\n\n") {
                let event = String(pending[..<r.lowerBound])
                pending = String(pending[r.upperBound...])
                if event.hasPrefix("data: ") { s.events.append(String(event.dropFirst(6))) }
            }
            try await onPart(s.parts.count)
        }
        return s
    }
}

/// The JSON of an SSE payload.
func eventJSON(_ s: String) throws -> [String: Any] {
    guard let o = try JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any] else { throw ServerTestError("bad event \(s)") }
    return o
}

/// Greedy text straight from the engine (no scheduler, no server): what the server must return.
func engineGreedy(prompt: String? = nil, messages: [ChatMessage]? = nil, maxTokens: Int) async throws -> String {
    var p = GenerationParameters()
    p.sampling = .greedy
    p.maxTokens = maxTokens
    let engine = try SharedEngine.get()
    let stream: AsyncStream<GenerationEvent>
    if let messages {
        p.addSpecialTokens = false
        p.parseSpecialTokens = true
        stream = try engine.generate(tokens: try engine.chatTokens(messages), parameters: p)
    } else {
        stream = try engine.generate(prompt: prompt!, parameters: p)
    }
    var text = ""
    for await e in stream { if case .text(let s, _) = e { text += s } }
    return text
}

/// Whether a TCP connection to 127.0.0.1:port succeeds now (plain sockets, no client pool).
func canConnect(port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let r = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    return r == 0
}
