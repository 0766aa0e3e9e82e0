#include "threads.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace netmorph {
namespace {

// Helper threads that sleep until a parallel_for hands them work. One call uses the pool at a
// time (others run on their calling thread); the pool is never destroyed (its threads are
// detached and end with the process).
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();
    return *pool;
  }

  // Runs fn over [0, n) with up to `helpers` pool threads beside the caller; false (nothing
  // run) when another call holds the pool.
  bool run(int64_t n, int helpers, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> use(use_, std::try_to_lock);
    if (!use.owns_lock()) return false;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      while (started_ < helpers) {  // a new helper takes part from this call on
        std::thread([this, seen = generation_] { serve(seen); }).detach();
        ++started_;
      }
      fn_ = &fn;
      n_ = n;
      next_.store(0);
      tickets_ = helpers;
      ++generation_;
    }
    work_.notify_all();
    drain();
    std::unique_lock<std::mutex> lock(mutex_);
    tickets_ = 0;  // helpers that wake from now on stay out
    done_.wait(lock, [this] { return running_ == 0; });
    fn_ = nullptr;
    return true;
  }

 private:
  Pool() = default;

  void drain() {
    for (int64_t i = next_.fetch_add(1); i < n_; i = next_.fetch_add(1)) (*fn_)(i);
  }

  // A helper's life: sleep until a call newer than `seen` is published, take part if it
  // still wants helpers.
  void serve(uint64_t seen) {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      work_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (tickets_ <= 0) continue;
      --tickets_;
      ++running_;
      lock.unlock();
      drain();
      lock.lock();
      if (--running_ == 0) done_.notify_all();
    }
  }

  std::mutex use_;    // held by the call using the pool
  std::mutex mutex_;  // guards everything below but next_
  std::condition_variable work_;
  std::condition_variable done_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  uint64_t generation_ = 0;
  int tickets_ = 0;   // helpers still wanted by the current call
  int running_ = 0;   // helpers working on the current call
  int started_ = 0;   // helpers created so far
};

}  // namespace

void parallel_for(int64_t n, int threads, const std::function<void(int64_t)>& fn) {
  const int helpers = static_cast<int>(std::min<int64_t>(threads, n)) - 1;
  if (helpers < 1 || !Pool::get().run(n, helpers, fn))
    for (int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace netmorph
