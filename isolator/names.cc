#include "isolator/names.h"

#include <kj/exception.h>

namespace nodeagent::isolator {

bool isValidName(kj::StringPtr name) {
  if (name.size() == 0 || name.size() > kMaxNameLength) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

void requireValidName(kj::StringPtr kind, kj::StringPtr name) {
  if (!isValidName(name)) {
    kj::throwFatalException(kj::Exception(
        kj::Exception::Type::FAILED, __FILE__, __LINE__,
        kj::str("invalid ", kind, " name \"", name, "\": use 1-64 characters from [A-Za-z0-9_-]")));
  }
}

}  // namespace nodeagent::isolator
