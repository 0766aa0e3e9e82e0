// The threads of one compose or correlate call.
//
// Work is cut into independent pieces (products, row or column blocks of a product, rows of a
// tap map) that `threads` threads take one at a time: the calling thread and helpers from a
// process-wide pool. The BLAS runs every piece on the thread that called it (SerialBlas). A
// thread that another process slows down simply takes fewer pieces, and a thread with nothing
// left to do sleeps (condition variables, no spinning): it never takes a core from the
// straggler it waits for or from other processes. An evenly split product on the BLAS's own
// threads instead waits for the slowest thread at every product, spinning meanwhile.
#pragma once

#include <cstdint>
#include <functional>

namespace netmorph {

// fn(i) for every i in [0, n), on up to `threads` threads (the caller and pool helpers). Runs
// everything on the calling thread when threads <= 1, n <= 1, or another call is using the
// pool. Returns when every fn(i) has returned; fn must not throw.
void parallel_for(int64_t n, int threads, const std::function<void(int64_t)>& fn);

}  // namespace netmorph
