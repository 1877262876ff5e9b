// Taking file descriptors out of a received SCM_RIGHTS control message.
#pragma once

#include <sys/socket.h>

#include <kj/array.h>
#include <kj/io.h>

namespace nodeagent::loop {

// Owns every fd in msg's SCM_RIGHTS entries and empties the control buffer
// (msg_controllen = 0), so a second call finds none.
kj::Array<kj::AutoCloseFd> takeScmRights(struct msghdr& msg);

}  // namespace nodeagent::loop
