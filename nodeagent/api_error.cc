#include "nodeagent/api_error.h"

#include <capnp/schema.h>

namespace nodeagent {
namespace {

constexpr kj::StringPtr kPrefix = "nodeagent."_kj;

// Finds "nodeagent.<code>: " anywhere in the description (RPC layers prepend
// their own text) and returns the position of <code>.
kj::Maybe<size_t> findCode(kj::StringPtr text) {
  for (size_t i = 0; i + kPrefix.size() <= text.size(); ++i) {
    if (memcmp(text.begin() + i, kPrefix.begin(), kPrefix.size()) == 0) {
      return i + kPrefix.size();
    }
  }
  return nullptr;
}

}  // namespace

kj::StringPtr errorCodeName(api::ErrorCode code) {
  auto enumerants = capnp::Schema::from<api::ErrorCode>().getEnumerants();
  auto index = static_cast<uint16_t>(code);
  if (index < enumerants.size()) return enumerants[index].getProto().getName();
  return "internal";
}

kj::Exception makeApiError(api::ErrorCode code, kj::StringPtr message, const char* file, int line) {
  return kj::Exception(kj::Exception::Type::FAILED, file, line,
                       kj::str(kPrefix, errorCodeName(code), ": ", message));
}

void throwApiError(api::ErrorCode code, kj::StringPtr message, const char* file, int line) {
  kj::throwFatalException(makeApiError(code, message, file, line));
}

kj::Maybe<api::ErrorCode> apiErrorCode(const kj::Exception& e) {
  kj::StringPtr text = e.getDescription();
  KJ_IF_MAYBE (start, findCode(text)) {
    for (auto enumerant : capnp::Schema::from<api::ErrorCode>().getEnumerants()) {
      kj::StringPtr name = enumerant.getProto().getName();
      size_t end = *start + name.size();
      if (end < text.size() && text[end] == ':' &&
          memcmp(text.begin() + *start, name.begin(), name.size()) == 0) {
        return static_cast<api::ErrorCode>(enumerant.getOrdinal());
      }
    }
  }
  return nullptr;
}

kj::String apiErrorMessage(const kj::Exception& e) {
  kj::StringPtr text = e.getDescription();
  KJ_IF_MAYBE (start, findCode(text)) {
    kj::StringPtr rest = text.slice(*start);
    KJ_IF_MAYBE (colon, rest.findFirst(':')) {
      size_t skip = *colon + 1;
      while (skip < rest.size() && rest[skip] == ' ') ++skip;
      return kj::str(rest.slice(skip));
    }
  }
  kj::StringPtr remote = "remote exception: "_kj;
  if (text.startsWith(remote)) return kj::str(text.slice(remote.size()));
  return kj::str(text);
}

}  // namespace nodeagent
