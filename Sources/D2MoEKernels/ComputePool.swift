import Foundation
import Synchronization

/// A fixed pool of compute threads that live for the process. Workers spin briefly after each job
/// (so a kernel call costs about a microsecond of dispatch) and then sleep, so an idle engine
/// does not burn a core. Dispatch goes through atomics, never through Dispatch queues.
public final class ComputePool: @unchecked Sendable {
    /// One thread per core.
    public static let shared = ComputePool(threadCount: ProcessInfo.processInfo.activeProcessorCount)

    /// Threads that run work, the caller's included.
    public let threadCount: Int

    private let generation = Atomic<Int>(0)
    private let nextItem = Atomic<Int>(0)
    private let running = Atomic<Int>(0)
    private let sleeping = Atomic<Int>(0)
    private let wake = NSCondition()
    /// Held for the length of a parallelFor; a second caller (another thread, or a nested call)
    /// that cannot take it runs its loop inline instead of waiting.
    private let callLock = NSLock()
    // Written by the caller before `generation` is bumped (release) and read by workers after
    // they see the bump (acquire).
    private var body: ((Int) -> Void)?
    private var itemCount = 0

    /// Spin iterations before a worker sleeps (~50 µs here).
    private let spinLimit = 20_000

    public init(threadCount: Int) {
        self.threadCount = max(1, threadCount)
        for i in 1..<self.threadCount {
            let thread = Thread { [unowned self] in self.workerLoop() }
            thread.name = "d2moe-compute-\(i)"
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    /// Runs body(i) for every i in 0..<n across the threads (the caller takes part) and returns
    /// when all have finished. A nested or concurrent call runs inline on its own thread.
    public func parallelFor(_ n: Int, _ body: (Int) -> Void) {
        guard n > 1, threadCount > 1, callLock.try() else {
            for i in 0..<n { body(i) }
            return
        }
        defer { callLock.unlock() }
        withoutActuallyEscaping(body) { escaping in
            self.body = escaping
            itemCount = n
            nextItem.store(0, ordering: .relaxed)
            running.store(threadCount - 1, ordering: .relaxed)
            generation.add(1, ordering: .releasing)
            if sleeping.load(ordering: .acquiring) > 0 {
                wake.lock()
                wake.broadcast()
                wake.unlock()
            }
            runItems()
            while running.load(ordering: .acquiring) > 0 {}
            self.body = nil
        }
    }

    private func runItems() {
        guard let body else { return }
        while true {
            let i = nextItem.add(1, ordering: .relaxed).oldValue
            if i >= itemCount { return }
            body(i)
        }
    }

    private func workerLoop() {
        var seen = 0
        while true {
            var spins = 0
            while generation.load(ordering: .acquiring) == seen {
                spins += 1
                if spins > spinLimit {
                    wake.lock()
                    sleeping.add(1, ordering: .sequentiallyConsistent)
                    while generation.load(ordering: .acquiring) == seen { wake.wait() }
                    sleeping.subtract(1, ordering: .sequentiallyConsistent)
                    wake.unlock()
                }
            }
            seen = generation.load(ordering: .acquiring)
            runItems()
            running.subtract(1, ordering: .releasing)
        }
    }
}
