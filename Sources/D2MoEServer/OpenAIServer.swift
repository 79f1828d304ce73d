import D2MoE
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import UnixSignals

/// How `OpenAIServer` listens and what it accepts.
public struct ServerConfiguration: Sendable {
    public var host = "127.0.0.1"
    /// 0 picks a free port (`onListening` reports it).
    public var port = 8080
    /// When set, `/v1/` requests need `Authorization: Bearer KEY`.
    public var apiKey: String?
    /// The name `/v1/models` lists and requests must name (or leave out).
    public var modelName: String
    /// Larger request bodies are refused with 413.
    public var maxBodyBytes = 1 << 20
    /// On SIGINT/SIGTERM, requests still running after this many seconds are cancelled.
    public var shutdownGraceSeconds = 30.0

    public init(modelName: String) { self.modelName = modelName }
}

/// The OpenAI-compatible HTTP server (DESIGN §5) over a `BatchScheduler`: `/v1/completions`,
/// `/v1/chat/completions` (both streaming as server-sent events), `/v1/models`, `/health` and
/// `/metrics`. Errors are OpenAI's JSON error objects; no request can stop the server.
public final class OpenAIServer: Sendable {
    public let scheduler: BatchScheduler
    public let configuration: ServerConfiguration
    let metrics = ServerMetrics()
    private let created = Int(Date().timeIntervalSince1970)
    private let group = GroupBox()

    public init(scheduler: BatchScheduler, configuration: ServerConfiguration) {
        self.scheduler = scheduler
        self.configuration = configuration
        let metrics = self.metrics
        let streamed = scheduler.engine.model.experts as? StreamingExperts
        scheduler.onStep = { [weak scheduler] step in
            guard let scheduler else { return }
            metrics.record(step: step, snapshot: scheduler.snapshot, experts: streamed?.stats)
        }
    }

    /// Serves until SIGINT or SIGTERM (or `shutdown()`), then stops accepting connections, lets
    /// running requests finish (cancelling them after the grace period) and returns.
    public func run(signals: [UnixSignal] = [.sigterm, .sigint], logger: Logger? = nil,
                    onListening: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        var log = logger ?? Logger(label: "d2moe.server")
        if logger == nil { log.logLevel = .warning }
        let app = Application(
            router: makeRouter(),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "d2moe"),
            onServerRunning: { channel in onListening(channel.localAddress?.port ?? 0) },
            logger: log)
        let schedulerService = SchedulerService(scheduler: scheduler, grace: configuration.shutdownGraceSeconds)
        // Shut down in reverse order: the scheduler first (no new requests, running ones finish),
        // then the HTTP server (stop accepting, wait for responses in flight).
        let serviceGroup = ServiceGroup(configuration: .init(
            services: [.init(service: app), .init(service: schedulerService)],
            gracefulShutdownSignals: signals, logger: log))
        group.set(serviceGroup)
        try await serviceGroup.run()
    }

    /// Starts the same graceful shutdown a signal does.
    public func shutdown() async { await group.get()?.triggerGracefulShutdown() }

    // MARK: Routes

    func makeRouter() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: ErrorMiddleware(metrics: metrics))
        if let key = configuration.apiKey { router.add(middleware: APIKeyMiddleware(key: key)) }
        router.get("/health") { [scheduler] _, _ -> Response in
            let s = scheduler.snapshot
            return jsonResponse("{\"status\":\"ok\",\"running\":\(s.running),\"queued\":\(s.queued)}")
        }
        router.get("/metrics") { [metrics, scheduler] _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: .init(byteBuffer: ByteBuffer(string: metrics.text(snapshot: scheduler.snapshot))))
        }
        router.get("/v1/models") { [configuration, created] _, _ -> Response in
            jsonResponse(encodeJSON(ModelList(data: [.init(id: configuration.modelName, created: created)])))
        }
        router.post("/v1/completions") { request, _ in try await self.generate(request, chat: false) }
        router.post("/v1/chat/completions") { request, _ in try await self.generate(request, chat: true) }
        return router
    }

    private func generate(_ request: Request, chat: Bool) async throws -> Response {
        let arrived = DispatchTime.now()
        // A client that disconnects cancels this task, which cancels its generation. Watching for
        // that ends the connection after the response, so every response here says so (a client
        // that reused the connection would find it closed).
        var response = try await request.body.consumeWithCancellationOnInboundClose { body -> Response in
            do { return try await generate(body: body, headers: request.headers, chat: chat, arrived: arrived) } catch let e as APIError {
                return ErrorMiddleware.response(e)
            }
        }
        response.headers[.connection] = "close"
        return response
    }

    private func generate(body: RequestBody, headers: HTTPFields, chat: Bool, arrived: DispatchTime) async throws -> Response {
        let json = try await readJSON(body, headers: headers)
        let req = try GenerationRequest(json: json, chat: chat, contextLength: scheduler.engine.contextLength)
        if let model = req.model, model != configuration.modelName {
            throw APIError(status: 400, "the model '\(model)' does not exist; this server has '\(configuration.modelName)'",
                           param: "model", code: "model_not_found")
        }
        let handle = try submit(req)
        metrics.promptTokens.increment(by: handle.promptTokens)
        let id = (chat ? "chatcmpl-" : "cmpl-") + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let reply = Reply(id: id, object: chat ? "chat.completion" : "text_completion", created: Int(Date().timeIntervalSince1970),
                          model: configuration.modelName, chat: chat, promptTokens: handle.promptTokens)
        if req.stream { return stream(handle, reply: reply, includeUsage: req.includeUsage, arrived: arrived) }
        var text = ""
        var stats: GenerationStats?
        for await event in handle.events {
            switch event {
            case .text(let s, _):
                if text.isEmpty { metrics.timeToFirstToken.recordNanoseconds(nanoseconds(since: arrived)) }
                text += s
            case .finished(let s): stats = s
            case .failed(let message):
                throw APIError(status: 500, "the model step failed: \(message)", type: "server_error")
            }
        }
        guard let stats else {
            handle.cancel()
            throw CancellationError()
        }
        metrics.generatedTokens.increment(by: stats.generatedTokens)
        let choice = Choice(body: chat ? .message(text) : .text(text), finishReason: finishReason(stats.finishReason))
        return jsonResponse(encodeJSON(reply.object(choices: [choice], usage: Usage(promptTokens: handle.promptTokens, stats: stats))))
    }

    private func submit(_ req: GenerationRequest) throws -> ScheduledRequest {
        let engine = scheduler.engine
        do {
            let tokens: [Int32]
            switch req.prompt {
            case .text(let s): tokens = engine.tokenizer.encode(s, addSpecial: true, parseSpecial: false)
            case .tokens(let t): tokens = t
            case .chat(let messages):
                do { tokens = try engine.chatTokens(messages) } catch {
                    throw APIError.badRequest("cannot apply the model's chat template: \(error)", param: "messages")
                }
            }
            if tokens.count + 1 > engine.contextLength {
                throw APIError.badRequest("the prompt is \(tokens.count) tokens; this model's context is \(engine.contextLength) tokens",
                                          param: "prompt", code: "context_length_exceeded")
            }
            return try scheduler.submit(tokens: tokens, parameters: req.parameters)
        } catch let e as SchedulerError {
            switch e {
            case .queueFull: throw APIError(status: 429, e.description, type: "rate_limit_error", code: "queue_full", retryAfter: 1)
            case .shuttingDown: throw APIError(status: 503, e.description, type: "server_error", code: "shutting_down")
            case .exceedsKVBudget: throw APIError.badRequest(e.description, param: "max_tokens")
            }
        } catch let e as GenerationError {
            throw APIError.badRequest(e.description)
        }
    }

    /// Server-sent events: one chunk per piece of text, a last chunk with the finish reason
    /// (and usage if asked for), then `data: [DONE]`.
    private func stream(_ handle: ScheduledRequest, reply: Reply, includeUsage: Bool, arrived: DispatchTime) -> Response {
        let metrics = self.metrics
        let body = ResponseBody { writer in
            // A write that fails (the client went away) ends this closure: the request is cancelled.
            defer { handle.cancel() }
            func send(_ json: String) async throws { try await writer.write(ByteBuffer(string: "data: \(json)\n\n")) }
            let object = reply.chat ? "chat.completion.chunk" : "text_completion"
            if reply.chat { try await send(encodeJSON(reply.object(object, choices: [Choice(body: .delta(role: "assistant", content: ""))]))) }
            var first = true
            for await event in handle.events {
                switch event {
                case .text(let s, _):
                    if first { metrics.timeToFirstToken.recordNanoseconds(nanoseconds(since: arrived)); first = false }
                    let choice = Choice(body: reply.chat ? .delta(role: nil, content: s) : .text(s))
                    try await send(encodeJSON(reply.object(object, choices: [choice])))
                case .finished(let stats):
                    metrics.generatedTokens.increment(by: stats.generatedTokens)
                    let last = Choice(body: reply.chat ? .delta(role: nil, content: nil) : .text(""), finishReason: finishReason(stats.finishReason))
                    try await send(encodeJSON(reply.object(object, choices: [last])))
                    if includeUsage {
                        try await send(encodeJSON(reply.object(object, choices: [], usage: Usage(promptTokens: reply.promptTokens, stats: stats))))
                    }
                case .failed(let message):
                    try await send(encodeJSON(ErrorBody(APIError(status: 500, "the model step failed: \(message)", type: "server_error"))))
                }
            }
            try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }

    private func readJSON(_ body: RequestBody, headers: HTTPFields) async throws -> JSONDocument {
        let limit = configuration.maxBodyBytes
        // An oversized body is still read (and dropped) up to a cap, so that the client, which is
        // still sending, gets to read the 413 instead of a reset connection.
        let drainCap = max(limit, 64 << 20)
        if let length = headers[.contentLength].flatMap({ Int($0) }), length > drainCap {
            throw APIError(status: 413, "the request body is \(length) bytes; the limit is \(limit) bytes")
        }
        var bytes: [UInt8] = []
        var total = 0
        for try await part in body {
            total += part.readableBytes
            if total <= limit { bytes += part.readableBytesView } else if total > drainCap { break }
        }
        if total > limit { throw APIError(status: 413, "the request body is \(total > drainCap ? "over \(drainCap)" : String(total)) bytes; the limit is \(limit) bytes") }
        guard String(validating: bytes, as: UTF8.self) != nil else { throw APIError.badRequest("the request body is not valid UTF-8") }
        do { return try JSONDocument.parse(bytes) } catch { throw APIError.badRequest("the request body is not valid JSON: \(error)") }
    }
}

/// What every object of one reply shares.
struct Reply: Sendable {
    var id: String
    var object: String
    var created: Int
    var model: String
    var chat: Bool
    var promptTokens: Int

    func object(_ name: String? = nil, choices: [Choice], usage: Usage? = nil) -> CompletionObject {
        CompletionObject(id: id, object: name ?? object, created: created, model: model, choices: choices, usage: usage)
    }
}

func jsonResponse(_ json: String, status: HTTPResponse.Status = .ok) -> Response {
    Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: json)))
}

/// What swift-metrics' timers record.
func nanoseconds(since start: DispatchTime) -> Int64 {
    Int64(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds)
}

/// Turns every error into OpenAI's error object with its status, and counts requests.
struct ErrorMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let metrics: ServerMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let endpoint = ["/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"]
            .first { request.uri.path == $0 } ?? "other"
        let response: Response
        do {
            response = try await next(request, context)
        } catch let e as APIError {
            response = Self.response(e)
        } catch let e as HTTPError {
            let message = e.body ?? (e.status == .notFound ? "no such endpoint: \(request.method) \(request.uri.path)" : e.status.reasonPhrase)
            response = Self.response(APIError(status: e.status.code, message, type: e.status.code >= 500 ? "server_error" : "invalid_request_error"))
        } catch is CancellationError {
            response = Self.response(APIError(status: 499, "the client closed the request", type: "cancelled"))
        } catch {
            response = Self.response(APIError(status: 500, "internal error: \(error)", type: "server_error"))
        }
        metrics.request(endpoint: endpoint, status: response.status.code)
        return response
    }

    static func response(_ e: APIError) -> Response {
        var r = jsonResponse(encodeJSON(ErrorBody(e)), status: HTTPResponse.Status(code: e.status))
        if let retry = e.retryAfter { r.headers[.retryAfter] = String(retry) }
        return r
    }
}

/// `Authorization: Bearer KEY` on `/v1/` routes.
struct APIKeyMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let key: String

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.uri.path.hasPrefix("/v1/") else { return try await next(request, context) }
        guard let auth = request.headers[.authorization] else {
            throw APIError(status: 401, "missing API key: send 'Authorization: Bearer KEY'", type: "authentication_error", code: "invalid_api_key")
        }
        guard auth == "Bearer \(key)" else {
            throw APIError(status: 401, "incorrect API key", type: "authentication_error", code: "invalid_api_key")
        }
        return try await next(request, context)
    }
}

/// Stops the scheduler on graceful shutdown and waits for its requests (cancelling those still
/// running after the grace period).
struct SchedulerService: Service {
    let scheduler: BatchScheduler
    let grace: Double

    func run() async throws {
        try? await gracefulShutdown()
        scheduler.shutdown(cancelRunning: false)
        let scheduler = self.scheduler, grace = self.grace
        let deadline = Task {
            try await Task.sleep(nanoseconds: UInt64(max(0, grace) * 1e9))
            scheduler.shutdown(cancelRunning: true)
        }
        await scheduler.waitUntilStopped()
        deadline.cancel()
    }
}

/// Holds the running service group so `shutdown()` can reach it.
private final class GroupBox: @unchecked Sendable {
    private let lock = NSLock()
    private var group: ServiceGroup?
    func set(_ g: ServiceGroup) { lock.withLock { group = g } }
    func get() -> ServiceGroup? { lock.withLock { group } }
}
