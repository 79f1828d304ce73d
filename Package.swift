// swift-tools-version: 6.1
// d2moe: Mixture-of-Experts inference under a hard memory budget (see README.md).
import PackageDescription

let package = Package(
    name: "d2moe",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "D2MoE", targets: ["D2MoE"]),
        .executable(name: "d2moe", targets: ["d2moe"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    ],
    targets: [
        // Layer 1: kernels. Quantized/instruction-set-specific code lives in C with per-function
        // target attributes and run-time dispatch (no unsafeFlags: DESIGN §3.3).
        .target(name: "CD2MoEKernels"),
        .target(name: "D2MoEKernels", dependencies: ["CD2MoEKernels"]),
        // Layer 2: formats (GGUF, safetensors, MWQ container) and tokenizers.
        .target(name: "D2MoEFormats", dependencies: ["D2MoEKernels"]),
        .target(name: "D2MoETokenizers"),
        // Layers 3-5: models, experts, generation. The public library.
        .target(name: "D2MoE", dependencies: ["D2MoEKernels", "D2MoEFormats", "D2MoETokenizers"]),
        // Layer 6: front ends. The OpenAI-compatible HTTP server (DESIGN §5), then the command line.
        .target(name: "D2MoEServer", dependencies: [
            "D2MoE",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        .executableTarget(name: "d2moe", dependencies: [
            "D2MoE", "D2MoEServer",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .testTarget(name: "D2MoEKernelsTests", dependencies: ["D2MoEKernels"]),
        .testTarget(name: "D2MoEFormatsTests", dependencies: ["D2MoEFormats"],
                    resources: [.copy("Golden")]),
        .testTarget(name: "D2MoETokenizersTests", dependencies: ["D2MoETokenizers"],
                    resources: [.copy("Golden"), .copy("Fixtures")]),
        .testTarget(name: "D2MoETests", dependencies: ["D2MoE", "D2MoEFormats"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "D2MoEServerTests", dependencies: [
            "D2MoEServer", "D2MoE",
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)
