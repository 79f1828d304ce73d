import Foundation

/// Where tests find things: committed fixtures in the bundle, real models and data fetched by
/// scripts/setup (absent locally → those tests are skipped with a message).
enum TestPaths {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    static var fixtures: URL { Bundle.module.resourceURL!.appendingPathComponent("Fixtures") }

    static var modelsDirectory: URL {
        ProcessInfo.processInfo.environment["D2MOE_MODELS_DIR"].map { URL(fileURLWithPath: $0) }
            ?? packageRoot.appendingPathComponent("models")
    }

    static var dataDirectory: URL { packageRoot.appendingPathComponent("data") }

    static var smolLM2: String { modelsDirectory.appendingPathComponent("SmolLM2-135M-Instruct.Q4_1.gguf").path }
    static var gemma3: String { modelsDirectory.appendingPathComponent("gemma-3-270m-q4_k_m.gguf").path }
    static var wikitext: String { dataDirectory.appendingPathComponent("wikitext-2-raw/wiki.test.raw").path }

    static func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    /// The built `d2moe` executable beside the test bundle.
    static var executable: URL {
        var dir = Bundle.module.bundleURL.deletingLastPathComponent()
        if !FileManager.default.fileExists(atPath: dir.appendingPathComponent("d2moe").path) {
            dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        }
        return dir.appendingPathComponent("d2moe")
    }

    /// A temporary copy of fixture `name` with its config.json edited; the caller removes it.
    static func editedFixture(_ name: String, _ edit: (inout [String: Any]) -> Void) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("d2moe-\(name)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let source = fixtures.appendingPathComponent(name)
        try FileManager.default.copyItem(at: source.appendingPathComponent("model.safetensors"),
                                         to: dir.appendingPathComponent("model.safetensors"))
        var config = try json(source.appendingPathComponent("config.json"))
        edit(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: dir.appendingPathComponent("config.json"))
        return dir
    }

    static func json(_ url: URL) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
    }
}

/// max |a − b| / max |b|: the error measure the reference comparisons bound.
func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    var num: Float = 0, den: Float = 0
    for i in 0..<a.count { num = max(num, abs(a[i] - b[i])); den = max(den, abs(b[i])) }
    return num / max(den, 1e-30)
}

/// Runs the CLI; returns its exit status, stdout and stderr.
func runCLI(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = TestPaths.executable
    process.arguments = arguments
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}
