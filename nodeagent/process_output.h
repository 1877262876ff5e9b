// The output of one process: pumps its stdout and stderr pipes into rings of
// recent output and on to every attached sink, with flow control. Sinks come
// and go (a gateway restarts and reattaches); the process never waits for a
// sink that is gone, and without any sink its output still lands in the rings
// (at a bounded rate: a process that writes faster blocks on its pipe, and
// cannot keep the agent busy copying output nobody reads).
#pragma once

#include <kj/async-io.h>
#include <kj/async.h>
#include <kj/refcount.h>
#include <kj/timer.h>
#include <kj/vector.h>

#include "nodeagent/output_ring.h"
#include "schema/gateway.capnp.h"

namespace nodeagent {

class ProcessOutput {
 public:
  static constexpr size_t kRingBytes = 1 << 20;  // per stream

  // Byte offsets of both streams.
  struct Offsets {
    uint64_t out = 0;
    uint64_t err = 0;
  };

  ProcessOutput(kj::Timer& timer, kj::Own<kj::AsyncInputStream> out,
                kj::Own<kj::AsyncInputStream> err);
  KJ_DISALLOW_COPY(ProcessOutput);

  // Resolves when both pipes reached EOF and every sink that was following
  // the live output by then has been sent done() and returned from it.
  kj::Promise<void> whenDrained() { return drained_.addBranch(); }

  // Replays from `from` (clamped to what the rings hold), then follows the
  // live output. Resolves with where replay began once the sink has caught
  // up, and after its done() when the output had already ended.
  kj::Promise<Offsets> attach(api::OutputSink::Client sink, Offsets from);
  // Adds a sink that gets the output from now on, without replay.
  void follow(api::OutputSink::Client sink);

  Offsets written() const { return {rings_[0].end(), rings_[1].end()}; }

 private:
  struct Sink : public kj::Refcounted {
    explicit Sink(api::OutputSink::Client client) : client(kj::mv(client)) {}
    api::OutputSink::Client client;
    uint64_t next[2] = {0, 0};  // the next offset it gets, per stream
    bool live[2] = {false, false};
    bool failed = false;  // gone: nothing more is sent to it
    bool doneSent = false;
  };

  kj::Promise<void> pump(int stream);
  kj::Promise<void> send(Sink& sink, int stream, kj::ArrayPtr<const kj::byte> data);
  kj::Promise<void> catchUp(kj::Own<Sink> sink, int stream);
  kj::Promise<void> sendDone(Sink& sink);
  kj::Promise<void> finish();
  void forgetGoneSinks();

  kj::Timer& timer_;
  kj::Own<kj::AsyncInputStream> pipes_[2];
  uint64_t unattended_[2] = {0, 0};  // bytes read for no sink since the last pause
  kj::Array<kj::byte> buffers_[2];
  OutputRing rings_[2];
  kj::Vector<kj::Own<Sink>> sinks_;
  bool finished_ = false;  // both pipes ended and done() went to the live sinks
  kj::ForkedPromise<void> drained_;
};

}  // namespace nodeagent
