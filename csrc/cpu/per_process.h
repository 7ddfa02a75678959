// A never-destroyed singleton that a forked child replaces with a fresh one.
//
// The CPU backend's caches (buffer pool, pack cache) are guarded by mutexes. A fork while
// another thread of the parent holds one (or is halfway through a free list) would leave
// the child, which has only the forking thread, with a lock nobody will release. So the
// child starts over: a new T, which keeps the parent's settings via T::inherit(parent);
// the parent's copy is left alone (never used, never freed) in the child.
// Never destroyed in the parent either: torch may free a tensor (and call back into the
// pool) after static destructors would have run.
#pragma once
#include <pthread.h>

namespace fastrnn {
namespace cpu {

template <typename T>
class PerProcess {
 public:
  static T& get() {
    static const bool registered = [] {
      instance_ = new T();
      pthread_atfork(nullptr, nullptr, reset_in_child);
      return true;
    }();
    (void)registered;
    return *instance_;
  }

 private:
  static void reset_in_child() {
    T* fresh = new T();
    fresh->inherit(*instance_);
    instance_ = fresh;
  }
  static inline T* instance_ = nullptr;
};

}  // namespace cpu
}  // namespace fastrnn
