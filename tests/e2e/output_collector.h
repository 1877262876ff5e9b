// An OutputSink that keeps a process's stdout and stderr in strings, for
// tests driving the gateway API directly.
#pragma once

#include <string>

#include "schema/gateway.capnp.h"

namespace nodeagent::testing {

class Collector final : public api::OutputSink::Server {
 public:
  // `dones`, if given, counts done() calls.
  Collector(std::string* out, std::string* err, int* dones = nullptr)
      : out_(out), err_(err), dones_(dones) {}
  kj::Promise<void> stdout(StdoutContext c) override {
    auto d = c.getParams().getData();
    out_->append(reinterpret_cast<const char*>(d.begin()), d.size());
    return kj::READY_NOW;
  }
  kj::Promise<void> stderr(StderrContext c) override {
    auto d = c.getParams().getData();
    err_->append(reinterpret_cast<const char*>(d.begin()), d.size());
    return kj::READY_NOW;
  }
  kj::Promise<void> done(DoneContext) override {
    if (dones_ != nullptr) ++*dones_;
    return kj::READY_NOW;
  }

 private:
  std::string* out_;
  std::string* err_;
  int* dones_;
};

}  // namespace nodeagent::testing
