#include "isolator/names.h"

#include <gtest/gtest.h>

#include <kj/exception.h>

#include <string>

namespace nodeagent::isolator {
namespace {

TEST(Names, AcceptsTheCharset) {
  EXPECT_TRUE(isValidName("acme"));
  EXPECT_TRUE(isValidName("Tenant_01-x"));
  EXPECT_TRUE(isValidName("0b8f3c9e-1d2a-4e5f-9a6b-7c8d9e0f1a2b"));
  EXPECT_TRUE(isValidName(kj::StringPtr(std::string(64, 'a').c_str())));
}

TEST(Names, RejectsPathTricksAndOddCharacters) {
  for (const char* bad : {"", ".", "..", "a/b", "../x", "a.b", "memory.max", "cgroup.procs", "a b",
                          "a\nb", "ä", "x:y"}) {
    EXPECT_FALSE(isValidName(bad)) << bad;
  }
  EXPECT_FALSE(isValidName(kj::StringPtr(std::string(65, 'a').c_str())));
  EXPECT_FALSE(isValidName(kj::StringPtr("a\0b", 3)));
}

TEST(Names, RequireThrowsWithAClearMessage) {
  EXPECT_NO_THROW(requireValidName("tenant", "acme"));
  try {
    requireValidName("tenant", "../etc");
    FAIL() << "expected an exception";
  } catch (const kj::Exception& e) {
    EXPECT_EQ(e.getType(), kj::Exception::Type::FAILED);
    std::string message = e.getDescription().cStr();
    EXPECT_NE(message.find("invalid tenant name \"../etc\""), std::string::npos) << message;
  }
}

}  // namespace
}  // namespace nodeagent::isolator
