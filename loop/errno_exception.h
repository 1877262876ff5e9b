// Turns a negative io_uring result (or an errno) into a kj::Exception whose type
// callers can act on: DISCONNECTED for a lost peer, OVERLOADED for exhausted
// resources, UNIMPLEMENTED for missing kernel support, FAILED otherwise.
#pragma once

#include <kj/exception.h>
#include <kj/string.h>

namespace nodeagent::loop {

kj::Exception::Type exceptionTypeForErrno(int error);

// `what` names the operation ("recv", "accept"); fd < 0 leaves it out.
kj::Exception errnoException(int error, kj::StringPtr what, int fd = -1);

}  // namespace nodeagent::loop
