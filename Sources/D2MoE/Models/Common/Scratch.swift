import D2MoEKernels

/// Reusable activation buffers for one forward pass ("the wave of activations"). Each slot grows
/// when a larger batch arrives and is kept, so steady-state decoding allocates nothing.
final class Scratch {
    enum Slot: Int, CaseIterable {
        case hidden, normed, query, key, value, attention, gate, up, ffnOut, router
        case gathered, expertGate, expertUp, expertOut, sharedGate, scores, blockOut, expertSlots
    }

    private var buffers: [AlignedBuffer?] = Array(repeating: nil, count: Slot.allCases.count)

    /// At least `count` floats for `slot`; contents are unspecified.
    func floats(_ slot: Slot, _ count: Int) -> UnsafeMutablePointer<Float> {
        if let b = buffers[slot.rawValue], b.byteCount >= count * 4 { return b.floats() }
        let b = AlignedBuffer(byteCount: max(count, 16) * 4)
        buffers[slot.rawValue] = b
        return b.floats()
    }
}
