import CD2MoEKernels

/// Anonymous page mappings that change size in place.
public enum Pages {
    /// Resizes a mapping from `mmap` (MAP_ANONYMOUS) of `oldSize` bytes to `newSize`, keeping
    /// the pages both sizes share: nil where the system cannot (then `p` is unchanged).
    public static func remap(_ p: UnsafeMutableRawPointer, oldSize: Int, newSize: Int) -> UnsafeMutableRawPointer? {
        d2moe_remap(p, oldSize, newSize)
    }
}
