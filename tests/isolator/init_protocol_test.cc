#include "isolator/init_protocol.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <capnp/message.h>
#include <kj/exception.h>

#include <string>
#include <vector>

#include "schema/init.capnp.h"

namespace nodeagent::isolator {
namespace {

int countOpenFds() {
  int count = 0;
  for (int fd = 0; fd < 1024; ++fd) count += fcntl(fd, F_GETFD) >= 0;
  return count;
}

struct SocketPair {
  kj::AutoCloseFd a, b;
  SocketPair() {
    int fds[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds), 0);
    a = kj::AutoCloseFd(fds[0]);
    b = kj::AutoCloseFd(fds[1]);
    configureInitSocket(a);
    configureInitSocket(b);
  }
};

void buildSpawn(capnp::MessageBuilder& message, uint64_t tag) {
  auto request = message.initRoot<initproto::Request>();
  request.setTag(tag);
  auto spawn = request.initSpawn();
  auto argv = spawn.initArgv(3);
  argv.set(0, "python3");
  argv.set(1, "-c");
  argv.set(2, "print('hi')");
  spawn.initEnv(1).set(0, "PATH=/usr/bin");
  spawn.setCwd("/tmp");
  spawn.setStdinOpen(true);
}

void expectSpawn(initproto::Request::Reader request, uint64_t tag) {
  EXPECT_EQ(request.getTag(), tag);
  ASSERT_EQ(request.which(), initproto::Request::SPAWN);
  auto spawn = request.getSpawn();
  ASSERT_EQ(spawn.getArgv().size(), 3u);
  EXPECT_EQ(spawn.getArgv()[2], "print('hi')");
  EXPECT_EQ(spawn.getEnv()[0], "PATH=/usr/bin");
  EXPECT_EQ(spawn.getCwd(), "/tmp");
  EXPECT_TRUE(spawn.getStdinOpen());
}

TEST(InitProtocol, EncodeDecodeRoundTrip) {
  capnp::MallocMessageBuilder message;
  buildSpawn(message, 42);
  kj::Array<kj::byte> bytes = encodeInitMessage(message);
  EXPECT_EQ(bytes.size() % 8, 0u);
  // Decoding must not depend on the caller's buffer alignment.
  std::vector<kj::byte> shifted(bytes.size() + 1);
  memcpy(shifted.data() + 1, bytes.begin(), bytes.size());
  auto reader = decodeInitMessage(kj::arrayPtr(shifted.data() + 1, bytes.size()));
  expectSpawn(reader->getRoot<initproto::Request>(), 42);
}

TEST(InitProtocol, DecodeRejectsGarbage) {
  kj::byte odd[5] = {1, 2, 3, 4, 5};
  EXPECT_THROW(decodeInitMessage(kj::arrayPtr(odd, 5)), kj::Exception);
  EXPECT_THROW(decodeInitMessage(kj::ArrayPtr<const kj::byte>()), kj::Exception);
  // A segment table claiming more data than there is.
  uint32_t lies[4] = {0, 1000, 0, 0};
  EXPECT_THROW(decodeInitMessage(kj::arrayPtr(reinterpret_cast<kj::byte*>(lies), 16)),
               kj::Exception);
  // Trailing bytes after a valid message.
  capnp::MallocMessageBuilder message;
  message.initRoot<initproto::Event>().setReady();
  auto bytes = encodeInitMessage(message);
  std::vector<kj::byte> longer(bytes.begin(), bytes.end());
  longer.resize(longer.size() + 8);
  EXPECT_THROW(decodeInitMessage(kj::arrayPtr(longer.data(), longer.size())), kj::Exception);
}

TEST(InitProtocol, EncodeRefusesOversizedMessages) {
  capnp::MallocMessageBuilder message;
  auto request = message.initRoot<initproto::Request>();
  auto argv = request.initSpawn().initArgv(1);
  argv.set(0, std::string(kMaxInitMessageBytes, 'x').c_str());
  EXPECT_THROW(encodeInitMessage(message), kj::Exception);
}

TEST(InitProtocol, MessageWithFdsOverASocketPair) {
  SocketPair pair;
  int pipeFds[2];
  ASSERT_EQ(pipe2(pipeFds, O_CLOEXEC), 0);
  kj::AutoCloseFd readEnd(pipeFds[0]), writeEnd(pipeFds[1]);

  capnp::MallocMessageBuilder message;
  buildSpawn(message, 7);
  int sent[] = {writeEnd.get(), readEnd.get()};
  sendInitMessage(pair.a, message, kj::arrayPtr(sent, 2));

  KJ_IF_MAYBE (received, receiveInitMessage(pair.b)) {
    expectSpawn(received->reader->getRoot<initproto::Request>(), 7);
    ASSERT_EQ(received->fds.size(), 2u);
    // New descriptors, close-on-exec, for the same pipe.
    EXPECT_NE(received->fds[0].get(), writeEnd.get());
    EXPECT_EQ(fcntl(received->fds[0], F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    ASSERT_EQ(write(received->fds[0], "ok", 2), 2);
    char buf[2];
    ASSERT_EQ(read(received->fds[1], buf, 2), 2);
    EXPECT_EQ(std::string(buf, 2), "ok");
  } else {
    FAIL() << "unexpected EOF";
  }
}

TEST(InitProtocol, OwnedFdsAreClosedAfterSendAndQueueable) {
  SocketPair pair;
  int before = countOpenFds();
  {
    int pipeFds[2];
    ASSERT_EQ(pipe2(pipeFds, O_CLOEXEC), 0);
    capnp::MallocMessageBuilder message;
    message.initRoot<initproto::Event>().initSpawned().setPid(5);
    InitDatagram datagram(message);
    datagram.attach(kj::AutoCloseFd(pipeFds[0]));
    datagram.attach(kj::AutoCloseFd(pipeFds[1]));
    InitDatagram moved = kj::mv(datagram);  // e.g. into an outbox
    EXPECT_TRUE(moved.sendTo(pair.a, MSG_DONTWAIT));
  }
  EXPECT_EQ(countOpenFds(), before);
  KJ_IF_MAYBE (received, receiveInitMessage(pair.b)) {
    EXPECT_EQ(received->reader->getRoot<initproto::Event>().getSpawned().getPid(), 5);
    EXPECT_EQ(received->fds.size(), 2u);
  } else {
    FAIL() << "unexpected EOF";
  }
  EXPECT_EQ(countOpenFds(), before);
}

TEST(InitProtocol, LargestMessageFits) {
  SocketPair pair;
  capnp::MallocMessageBuilder message;
  auto argv = message.initRoot<initproto::Request>().initSpawn().initArgv(1);
  argv.set(0, std::string(kMaxInitMessageBytes - 256, 'x').c_str());
  sendInitMessage(pair.a, message);
  KJ_IF_MAYBE (received, receiveInitMessage(pair.b)) {
    auto arg = received->reader->getRoot<initproto::Request>().getSpawn().getArgv()[0];
    EXPECT_EQ(arg.size(), kMaxInitMessageBytes - 256);
  } else {
    FAIL() << "unexpected EOF";
  }
}

TEST(InitProtocol, TruncatedDatagramIsAnErrorAndClosesFds) {
  SocketPair pair;
  int before = countOpenFds();
  // Too big: bypass the sender's check with a raw sendmsg.
  std::vector<char> big(kMaxInitMessageBytes + 64, 0);
  int pipeFds[2];
  ASSERT_EQ(pipe2(pipeFds, O_CLOEXEC), 0);
  kj::AutoCloseFd r(pipeFds[0]), w(pipeFds[1]);
  {
    iovec iov{big.data(), big.size()};
    char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &pipeFds[0], sizeof(int));
    ASSERT_EQ(sendmsg(pair.a, &msg, 0), ssize_t(big.size()));
  }
  try {
    receiveInitMessage(pair.b);
    FAIL() << "expected a truncation error";
  } catch (const kj::Exception& e) {
    EXPECT_NE(std::string(e.getDescription().cStr()).find("truncated"), std::string::npos);
  }
  EXPECT_EQ(countOpenFds(), before + 2);  // only our own pipe
}

TEST(InitProtocol, TooManyFdsIsAnErrorAndClosesThem) {
  SocketPair pair;
  int pipeFds[2];
  ASSERT_EQ(pipe2(pipeFds, O_CLOEXEC), 0);
  kj::AutoCloseFd r(pipeFds[0]), w(pipeFds[1]);
  int before = countOpenFds();
  capnp::MallocMessageBuilder message;
  message.initRoot<initproto::Event>().setReady();
  auto bytes = encodeInitMessage(message);
  int fds[kMaxInitMessageFds + 2];
  for (auto& fd : fds) fd = r.get();
  {
    iovec iov{bytes.begin(), bytes.size()};
    char control[CMSG_SPACE(sizeof(fds))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(cmsg), fds, sizeof(fds));
    ASSERT_EQ(sendmsg(pair.a, &msg, 0), ssize_t(bytes.size()));
  }
  EXPECT_THROW(receiveInitMessage(pair.b), kj::Exception);
  EXPECT_EQ(countOpenFds(), before);
  // The connection is still usable afterwards.
  sendInitMessage(pair.a, message);
  EXPECT_TRUE(receiveInitMessage(pair.b) != nullptr);
}

TEST(InitProtocol, EofIsNull) {
  SocketPair pair;
  pair.a = nullptr;
  EXPECT_TRUE(receiveInitMessage(pair.b) == nullptr);
}

TEST(InitProtocol, ReceiverWorksWithACallerIssuedRecvmsg) {
  // As an event loop would: it owns the recvmsg, the receiver owns buffers and parsing.
  SocketPair pair;
  capnp::MallocMessageBuilder message;
  message.initRoot<initproto::Event>().initExited().setWaitStatus(9);
  InitDatagram datagram(message);
  const msghdr* out = datagram.header();
  ASSERT_EQ(sendmsg(pair.a, out, 0), ssize_t(datagram.bytes().size()));
  InitDatagramReceiver receiver;
  ssize_t n = recvmsg(pair.b, receiver.header(), MSG_CMSG_CLOEXEC);
  ASSERT_GT(n, 0);
  KJ_IF_MAYBE (received, receiver.finish(n)) {
    EXPECT_EQ(received->reader->getRoot<initproto::Event>().getExited().getWaitStatus(), 9);
  } else {
    FAIL() << "unexpected EOF";
  }
}

}  // namespace
}  // namespace nodeagent::isolator
