#include "nodeagent/process_output.h"

#include <kj/debug.h>

#include "util/log.h"

namespace nodeagent {
namespace {

constexpr size_t kChunkBytes = 64 * 1024;
// Output nobody follows is read at up to this much per stream per pause.
constexpr uint64_t kUnattendedBurstBytes = 1 << 20;
constexpr kj::Duration kUnattendedPause = 100 * kj::MILLISECONDS;

}  // namespace

ProcessOutput::ProcessOutput(kj::Timer& timer, kj::Own<kj::AsyncInputStream> out,
                             kj::Own<kj::AsyncInputStream> err)
    : timer_(timer),
      pipes_{kj::mv(out), kj::mv(err)},
      buffers_{kj::heapArray<kj::byte>(kChunkBytes), kj::heapArray<kj::byte>(kChunkBytes)},
      rings_{OutputRing(kRingBytes), OutputRing(kRingBytes)},
      drained_(
          kj::joinPromises(kj::arr(pump(0), pump(1))).then([this]() { return finish(); }).fork()) {}

kj::Promise<void> ProcessOutput::pump(int stream) {
  auto& buffer = buffers_[stream];
  return pipes_[stream]
      ->tryRead(buffer.begin(), 1, buffer.size())
      .then(
          [this, stream](size_t n) -> kj::Promise<void> {
            if (n == 0) return kj::READY_NOW;
            auto data = buffers_[stream].slice(0, n);
            rings_[stream].append(data);
            // Every live sink gets the chunk; the next read waits for the
            // slowest one's flow control, which is what paces the process.
            kj::Vector<kj::Promise<void>> sends;
            for (auto& sink : sinks_) {
              if (!sink->live[stream] || sink->failed) continue;
              sink->next[stream] = rings_[stream].end();
              sends.add(send(*sink, stream, data));
            }
            if (sends.empty()) {
              unattended_[stream] += n;
              if (unattended_[stream] >= kUnattendedBurstBytes) {
                unattended_[stream] = 0;
                return timer_.afterDelay(kUnattendedPause).then([this, stream]() {
                  return pump(stream);
                });
              }
            }
            return kj::joinPromises(sends.releaseAsArray()).then([this, stream]() {
              return pump(stream);
            });
          },
          [](kj::Exception&& e) {
            // A broken pipe ends the stream like EOF would.
            log::warn("process.output_read_failed", {{"error", e.getDescription().cStr()}});
          });
}

kj::Promise<void> ProcessOutput::send(Sink& sink, int stream, kj::ArrayPtr<const kj::byte> data) {
  kj::Promise<void> sent = nullptr;
  if (stream == 0) {
    auto request = sink.client.stdoutRequest();
    request.setData(data);  // copied into the message
    sent = request.send();
  } else {
    auto request = sink.client.stderrRequest();
    request.setData(data);
    sent = request.send();
  }
  return sent.catch_([&sink](kj::Exception&&) { sink.failed = true; }).attach(kj::addRef(sink));
}

kj::Promise<void> ProcessOutput::catchUp(kj::Own<Sink> sink, int stream) {
  if (sink->failed) return kj::READY_NOW;
  OutputRing& ring = rings_[stream];
  // Bytes the ring dropped meanwhile are skipped; the sink cannot have them.
  sink->next[stream] = kj::max(sink->next[stream], ring.begin());
  if (sink->next[stream] >= ring.end()) {
    // Caught up, synchronously with the check: the pump's next chunk is ours.
    sink->live[stream] = true;
    return kj::READY_NOW;
  }
  auto chunk = ring.read(sink->next[stream], kChunkBytes);
  sink->next[stream] += chunk.size();
  auto& ref = *sink;
  return send(ref, stream, chunk).then([this, sink = kj::mv(sink), stream]() mutable {
    return catchUp(kj::mv(sink), stream);
  });
}

void ProcessOutput::forgetGoneSinks() {
  // So that reattaching again and again cannot pile them up.
  kj::Vector<kj::Own<Sink>> keep;
  for (auto& s : sinks_) {
    if (!s->failed && !s->doneSent) keep.add(kj::mv(s));
  }
  sinks_ = kj::mv(keep);
}

kj::Promise<ProcessOutput::Offsets> ProcessOutput::attach(api::OutputSink::Client client,
                                                          Offsets from) {
  forgetGoneSinks();

  auto sink = kj::refcounted<Sink>(kj::mv(client));
  sink->next[0] = kj::max(kj::min(from.out, rings_[0].end()), rings_[0].begin());
  sink->next[1] = kj::max(kj::min(from.err, rings_[1].end()), rings_[1].begin());
  Offsets started{sink->next[0], sink->next[1]};
  sinks_.add(kj::addRef(*sink));
  auto replay =
      kj::joinPromises(kj::arr(catchUp(kj::addRef(*sink), 0), catchUp(kj::addRef(*sink), 1)));
  return replay
      .then([this, sink = kj::mv(sink)]() mutable -> kj::Promise<void> {
        // Output that had ended before this sink caught up: finish()
        // did not count it, so it gets its done() here.
        if (finished_) return sendDone(*sink).attach(kj::mv(sink));
        return kj::READY_NOW;
      })
      .then([started]() { return started; });
}

void ProcessOutput::follow(api::OutputSink::Client client) {
  forgetGoneSinks();
  auto sink = kj::refcounted<Sink>(kj::mv(client));
  for (int stream : {0, 1}) {
    sink->next[stream] = rings_[stream].end();
    sink->live[stream] = true;
  }
  sinks_.add(kj::mv(sink));
}

kj::Promise<void> ProcessOutput::sendDone(Sink& sink) {
  if (sink.failed || sink.doneSent) return kj::READY_NOW;
  sink.doneSent = true;
  return sink.client.doneRequest()
      .send()
      .ignoreResult()
      .catch_([&sink](kj::Exception&&) { sink.failed = true; })
      .attach(kj::addRef(sink));
}

kj::Promise<void> ProcessOutput::finish() {
  finished_ = true;
  kj::Vector<kj::Promise<void>> dones;
  for (auto& sink : sinks_) {
    if (sink->live[0] && sink->live[1]) dones.add(sendDone(*sink));
  }
  return kj::joinPromises(dones.releaseAsArray());
}

}  // namespace nodeagent
