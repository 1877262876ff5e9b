#pragma once
namespace nodeagent {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace nodeagent
