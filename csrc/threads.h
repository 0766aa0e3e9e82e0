// The threads of one kernel call.
//
// Work is split into independent pieces (products, row or column blocks of a product, rows of
// a tap map) handed out to OpenMP threads one at a time (dynamic schedule), and the BLAS runs
// every piece on the thread that called it. A thread that another process slows down then
// simply takes fewer pieces; a BLAS that splits each product evenly over its own threads
// instead waits for the slowest one at every product, and its waiting threads spin.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

#include "blas.h"

namespace netmorph {

// OpenMP threads a parallel region started now on the calling thread gets (1 without OpenMP).
inline int omp_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// For its scope: `threads` OpenMP threads for the calling thread's parallel regions (its own
// setting, restored on exit) and a single-threaded BLAS (SerialBlas, blas.h).
class CallThreads {
 public:
  explicit CallThreads(int threads) : previous_(omp_threads()) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
  }
  ~CallThreads() {
#ifdef _OPENMP
    omp_set_num_threads(previous_);
#endif
  }
  CallThreads(const CallThreads&) = delete;
  CallThreads& operator=(const CallThreads&) = delete;

 private:
  SerialBlas serial_;
  int previous_;
};

}  // namespace netmorph
