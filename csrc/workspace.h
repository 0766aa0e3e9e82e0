// Per-thread scratch memory kept between calls: a fresh multi-megabyte buffer costs a page
// fault and a kernel zeroing per page, as much time as the transforms themselves on
// medium-sized problems. The buffer grows to the largest request made on the thread.
#pragma once

#include <cstdint>
#include <memory>

namespace netmorph {

template <typename T>
struct Scratch {
  std::unique_ptr<T[]> data;
  int64_t size = 0;
};

template <typename T>
Scratch<T>& thread_scratch() {
  thread_local Scratch<T> s;
  return s;
}

// Uninitialised storage for `count` elements, valid until the next call on this thread.
template <typename T>
T* workspace(int64_t count) {
  Scratch<T>& s = thread_scratch<T>();
  if (count > s.size) {
    s.data.reset();  // free first: the old and new buffers need not coexist
    s.data.reset(new T[count]);
    s.size = count;
  }
  return s.data.get();
}

// Give the calling thread's scratch memory back to the system.
template <typename T>
void release_workspace() {
  Scratch<T>& s = thread_scratch<T>();
  s.data.reset();
  s.size = 0;
}

}  // namespace netmorph
