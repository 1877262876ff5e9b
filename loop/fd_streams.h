// KJ stream, listener and connect wrappers whose I/O goes through a
// UringEventPort. The wrappers own their fds; like any KJ stream, a wrapper
// must outlive the promises it returned.
//
// Writes to pipes can raise SIGPIPE once the reader is gone (sockets use
// MSG_NOSIGNAL); the process is expected to ignore SIGPIPE.
#pragma once

#include <sys/socket.h>

#include <kj/async-io.h>
#include <kj/io.h>

#include "loop/uring_event_port.h"

namespace nodeagent::loop {

// A connected stream socket (unix or TCP): recv/send; tryRead() loops over
// short reads until minBytes; write() loops until everything is written.
kj::Own<kj::AsyncIoStream> wrapSocketFd(UringEventPort& port, kj::AutoCloseFd fd);

// Pipes, character devices and regular files. For a regular file the stream
// tracks its own offset, starting at the fd's current position (O_APPEND
// files keep appending).
kj::Own<kj::AsyncInputStream> wrapInputFd(UringEventPort& port, kj::AutoCloseFd fd);
kj::Own<kj::AsyncOutputStream> wrapOutputFd(UringEventPort& port, kj::AutoCloseFd fd);

// A socket already bound and listening. Accepted TCP sockets get TCP_NODELAY.
kj::Own<kj::ConnectionReceiver> wrapListenFd(UringEventPort& port, kj::AutoCloseFd fd);

// A new SOCK_STREAM socket of addr's family, connected to addr (TCP sockets
// get TCP_NODELAY). `addr` is copied; it need not outlive the call.
kj::Promise<kj::Own<kj::AsyncIoStream>> connectSocket(UringEventPort& port,
                                                      const struct sockaddr* addr, socklen_t len);

}  // namespace nodeagent::loop
