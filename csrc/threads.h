// The thread counts of one kernel call.
//
// A call runs in one of two regimes (planes.h): OpenMP threads each running small products on
// their own, or large products on the BLAS's threads with everything else on the calling
// thread. CallThreads gives the chosen regime `threads` threads and the other one a single
// thread, for its scope: OpenMP's count is the calling thread's own setting (restored on
// exit), the BLAS's is the library's global one (BlasThreads, blas.h).
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

#include "blas.h"

namespace netmorph {

class CallThreads {
 public:
  CallThreads(int threads, bool openmp)
      : blas_(openmp ? 1 : threads), previous_(max_openmp_threads()) {
#ifdef _OPENMP
    omp_set_num_threads(openmp ? threads : 1);
#endif
  }
  ~CallThreads() {
#ifdef _OPENMP
    omp_set_num_threads(previous_);
#endif
  }
  CallThreads(const CallThreads&) = delete;
  CallThreads& operator=(const CallThreads&) = delete;

  static int max_openmp_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  }

 private:
  BlasThreads blas_;
  int previous_;
};

}  // namespace netmorph
