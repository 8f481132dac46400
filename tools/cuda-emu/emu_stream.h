// emu_stream.h — the emulated driver's streams, shared by fake_cuda.cpp, fake_nccl.cpp and fake_cublas.cpp (one library).
// Kernels and copies run synchronously on the calling thread, as before; the one kind of work that runs
// asynchronously is a collective of the fake NCCL, which (like a real NCCL kernel waiting for its peers) may
// not finish until other ranks arrive, or ever. So a stream is a FIFO with one worker thread: cuStreamQuery
// answers CUDA_ERROR_NOT_READY while queued work remains, cuStreamSynchronize waits for it, and synchronous
// work on a stream first waits for what was queued before it, keeping the stream's order.
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace emu {

struct Stream
{
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::function<void()>> queue;
    int pending = 0;   // queued + running
    bool stop = false;
    std::thread worker;
    // Stream capture (cuStreamBeginCapture_v2, thread-local mode): while set, launches and cuBLAS calls on this
    // stream are appended here instead of running, and the capturing thread may not make a synchronizing call.
    std::vector<std::function<void()>>* capture = nullptr;
    std::thread::id capture_thread;

    Stream() : worker([this] { Run(); }) {}
    ~Stream()
    {
        { std::lock_guard<std::mutex> lock(m); stop = true; }
        cv.notify_all();
        worker.join();   // a collective still waiting for peers would block here: abort its communicator first
    }

    void Enqueue(std::function<void()> work)
    {
        { std::lock_guard<std::mutex> lock(m); queue.push_back(std::move(work)); pending++; }
        cv.notify_all();
    }
    bool Idle() { std::lock_guard<std::mutex> lock(m); return pending == 0; }
    void Wait() { std::unique_lock<std::mutex> lock(m); cv.wait(lock, [&] { return pending == 0; }); }

private:
    void Run()
    {
        std::unique_lock<std::mutex> lock(m);
        for (;;)
        {
            cv.wait(lock, [&] { return stop || !queue.empty(); });
            if (queue.empty()) return;   // stop, and nothing left
            auto work = std::move(queue.front());
            queue.pop_front();
            lock.unlock();
            work();
            lock.lock();
            pending--;
            cv.notify_all();
        }
    }
};

// The legacy default stream (CUstream 0), and the set of live streams that a synchronous copy waits for
// (streams made by cuStreamCreate with flags 0 are blocking: they synchronize with the default stream).
Stream& default_stream();
Stream* stream_of(void* handle);   // handle 0 → the default stream
void wait_all_streams();
// Whether this thread is capturing a stream (a synchronizing call would invalidate the capture on a GPU).
bool capturing_on_this_thread();
// Whether [p, p + bytes) lies inside one live device allocation (fake_cuda.cpp's map): the fake cuBLAS checks its matrices.
bool device_range(unsigned long long p, size_t bytes);

} // namespace emu
