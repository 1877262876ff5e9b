// Typed errors of the gateway API.
//
// The server throws kj::Exceptions whose description starts with
// "nodeagent.<code>: " (see schema/gateway.capnp); clients recover the code
// with apiErrorCode(). Cap'n Proto carries the description across the wire.
#pragma once

#include <kj/common.h>
#include <kj/exception.h>
#include <kj/string.h>

#include "schema/gateway.capnp.h"

namespace nodeagent {

kj::StringPtr errorCodeName(api::ErrorCode code);

kj::Exception makeApiError(api::ErrorCode code, kj::StringPtr message,
                           const char* file = __builtin_FILE(), int line = __builtin_LINE());

[[noreturn]] void throwApiError(api::ErrorCode code, kj::StringPtr message,
                                const char* file = __builtin_FILE(), int line = __builtin_LINE());

// The code of an exception raised by throwApiError, here or on the far side
// of an RPC connection. Null for any other exception.
kj::Maybe<api::ErrorCode> apiErrorCode(const kj::Exception& e);

// The human part: the description without "nodeagent.<code>: " and without
// the "remote exception: " prefix Cap'n Proto adds.
kj::String apiErrorMessage(const kj::Exception& e);

}  // namespace nodeagent
