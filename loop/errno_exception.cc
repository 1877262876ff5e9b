#include "loop/errno_exception.h"

#include <errno.h>
#include <string.h>

namespace nodeagent::loop {

kj::Exception::Type exceptionTypeForErrno(int error) {
  switch (error) {
    case ECONNRESET:
    case ECONNABORTED:
    case ECONNREFUSED:
    case ENOTCONN:
    case EPIPE:
    case ETIMEDOUT:
    case EHOSTDOWN:
    case EHOSTUNREACH:
    case ENETDOWN:
    case ENETRESET:
    case ENETUNREACH:
      return kj::Exception::Type::DISCONNECTED;
    case ENOMEM:
    case ENOBUFS:
    case ENOSPC:
    case EDQUOT:
    case EMFILE:
    case ENFILE:
      return kj::Exception::Type::OVERLOADED;
    case ENOSYS:
    case EOPNOTSUPP:
      return kj::Exception::Type::UNIMPLEMENTED;
    default:
      return kj::Exception::Type::FAILED;
  }
}

kj::Exception errnoException(int error, kj::StringPtr what, int fd) {
  // strerrordesc_np is thread-safe and never allocates, unlike strerror().
  const char* desc = strerrordesc_np(error);
  const char* name = strerrorname_np(error);
  kj::String text =
      fd >= 0 ? kj::str(what, "(fd ", fd, "): ", desc ? desc : "unknown error", " (",
                        name ? name : "?", ")")
              : kj::str(what, ": ", desc ? desc : "unknown error", " (", name ? name : "?", ")");
  return kj::Exception(exceptionTypeForErrno(error), __FILE__, __LINE__, kj::mv(text));
}

}  // namespace nodeagent::loop
