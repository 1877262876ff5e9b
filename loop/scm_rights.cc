#include "loop/scm_rights.h"

#include <string.h>

#include <kj/vector.h>

namespace nodeagent::loop {

kj::Array<kj::AutoCloseFd> takeScmRights(struct msghdr& msg) {
  kj::Vector<kj::AutoCloseFd> fds;
  if (msg.msg_control == nullptr) return fds.releaseAsArray();
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    if (cmsg->cmsg_len < CMSG_LEN(0)) continue;
    size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const kj::byte* data = CMSG_DATA(cmsg);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      memcpy(&fd, data + i * sizeof(int), sizeof(int));  // CMSG_DATA may be unaligned
      fds.add(kj::AutoCloseFd(fd));
    }
  }
  msg.msg_controllen = 0;
  return fds.releaseAsArray();
}

}  // namespace nodeagent::loop
