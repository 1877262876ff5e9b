// Messages with file descriptors attached (SCM_RIGHTS) over a SOCK_SEQPACKET
// unix socket: one send is one message, which is how the sandbox init
// protocol frames its requests.
#pragma once

#include <kj/array.h>
#include <kj/async.h>
#include <kj/io.h>

#include "loop/uring_event_port.h"

namespace nodeagent::loop {

struct ReceivedMessage {
  kj::Array<kj::byte> bytes;  // empty means EOF (so never send empty messages)
  kj::Array<kj::AutoCloseFd> fds;
};

// Receives one message of at most maxBytes carrying at most maxFds fds (all
// close-on-exec). A message or fd list that did not fit (MSG_TRUNC,
// MSG_CTRUNC) rejects the promise; any fds that did arrive are closed.
kj::Promise<ReceivedMessage> receiveWithFds(UringEventPort& port, int fd, size_t maxBytes,
                                            size_t maxFds);

// Sends `bytes` (non-empty) with `fds` attached; the fds must stay open until
// the promise resolves.
kj::Promise<void> sendWithFds(UringEventPort& port, int fd, kj::ArrayPtr<const kj::byte> bytes,
                              kj::ArrayPtr<const int> fds);

}  // namespace nodeagent::loop
