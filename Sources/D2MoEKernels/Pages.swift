import Foundation
import CD2MoEKernels

/// Pages of anonymous mappings moved between mappings without copying.
public enum Pages {
    /// The system's page size.
    public static let size: Int = {
        let n = sysconf(Int32(_SC_PAGESIZE))
        return n > 0 ? n : 4096
    }()

    /// `bytes` rounded up to whole pages.
    public static func roundUp(_ bytes: Int) -> Int { (bytes + size - 1) / size * size }

    /// Moves the pages of `length` bytes at `from` (inside one anonymous mapping) to `to`,
    /// replacing what is mapped there: the pages stay resident and keep their contents, and the
    /// range at `from` is left unmapped. False (nothing moved) where the system cannot.
    public static func move(from: UnsafeMutableRawPointer, length: Int, to: UnsafeMutableRawPointer) -> Bool {
        d2moe_move_pages(from, length, to) == 0
    }
}
