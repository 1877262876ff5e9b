#include "support/fake_internet.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace nodeagent::testing {
namespace {

using namespace std::chrono_literals;

// The HTTP, UDP echo and DNS-over-TLS stand-in servers. argv[1]: comma-separated
// service addresses, argv[2]: the address for the port 853 listener.
constexpr const char* kServersPy = R"py(
import socket, socketserver, sys, threading
from http.server import BaseHTTPRequestHandler

class Http(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == '/whoami':
            body = self.client_address[0]
        elif self.path == '/':
            body = 'fake-internet ' + self.server.server_address[0]
        else:
            self.send_error(404)
            return
        data = (body + '\n').encode()
        self.send_response(200)
        self.send_header('Content-Type', 'text/plain')
        self.send_header('Content-Length', str(len(data)))
        self.send_header('Connection', 'close')
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        sys.stderr.write('http %s %s\n' % (self.client_address[0], fmt % args))

def family(addr):
    return socket.AF_INET6 if ':' in addr else socket.AF_INET

def forever(fn):
    threading.Thread(target=fn, daemon=True).start()

def http(addr):
    cls = type('Server', (socketserver.ThreadingTCPServer,), {
        'address_family': family(addr), 'allow_reuse_address': True, 'daemon_threads': True})
    forever(cls((addr, 80), Http).serve_forever)

def echo(addr):
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    s.bind((addr, 7))
    def loop():
        while True:
            data, peer = s.recvfrom(65535)
            s.sendto(peer[0].encode() + b' ' + data, peer)
    forever(loop)

def accept_and_close(addr, port):
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(64)
    def loop():
        while True:
            s.accept()[0].close()
    forever(loop)

for a in sys.argv[1].split(','):
    http(a)
    echo(a)
accept_and_close(sys.argv[2], 853)
sys.stderr.write('servers ready\n')
threading.Event().wait()
)py";

std::string join(const std::vector<std::string>& parts, const char* sep) {
  std::string out;
  for (const auto& p : parts) {
    if (!out.empty()) out += sep;
    out += p;
  }
  return out;
}

// Canonical text form ("2001:db8:ffff:0::1" -> "2001:db8:ffff::1").
std::string canonical6(const std::string& text) {
  in6_addr a{};
  char buf[INET6_ADDRSTRLEN];
  if (inet_pton(AF_INET6, text.c_str(), &a) != 1 || !inet_ntop(AF_INET6, &a, buf, sizeof buf)) {
    throw std::runtime_error("bad IPv6 address " + text);
  }
  return buf;
}

std::string hex(int n) {
  std::ostringstream s;
  s << std::hex << n;
  return s.str();
}

void ipOrThrow(const std::vector<std::string>& args) {
  std::vector<std::string> argv{"ip"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = FakeInternet::run(argv);
  if (r.exitCode != 0) {
    throw std::runtime_error("FakeInternet: `" + join(argv, " ") + "` failed: " + r.output);
  }
}

std::string pythonPath() {
  return access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
}

std::vector<char*> cArgv(const std::vector<std::string>& argv) {
  std::vector<char*> out;
  for (const auto& a : argv) out.push_back(const_cast<char*>(a.c_str()));
  out.push_back(nullptr);
  return out;
}

// Sockets in /proc/<pid>/net/<proto>{,6} (the process' netns) bound to `port`,
// in state LISTEN for tcp.
int countSockets(pid_t pid, const std::string& proto, uint16_t port) {
  int count = 0;
  for (const char* suffix : {"", "6"}) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + proto + suffix);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state;
      fields >> slot >> local >> remote >> state;
      auto colon = local.rfind(':');
      if (colon == std::string::npos) continue;
      if (std::stoul(local.substr(colon + 1), nullptr, 16) != port) continue;
      if (proto == "tcp" && state != "0A") continue;
      ++count;
    }
  }
  return count;
}

// Running (not a zombie): /proc/<pid>/stat reads "<pid> (<comm>) <state> ...".
bool alive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z';
}

bool toSockaddr(const std::string& address, uint16_t port, sockaddr_storage* ss, socklen_t* len) {
  *ss = {};
  auto* v4 = reinterpret_cast<sockaddr_in*>(ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(ss);
  if (inet_pton(AF_INET, address.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    *len = sizeof *v4;
    return true;
  }
  if (inet_pton(AF_INET6, address.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    *len = sizeof *v6;
    return true;
  }
  return false;
}

// A connected socket with send/receive timeouts, or -1 with `error` set.
int connectTo(const std::string& address, uint16_t port, int type,
              std::chrono::milliseconds timeout, std::string* error) {
  sockaddr_storage ss;
  socklen_t len;
  if (!toSockaddr(address, port, &ss, &len)) {
    *error = "not an IP address: " + address;
    return -1;
  }
  int fd = socket(ss.ss_family, type | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = std::string("socket: ") + std::strerror(errno);
    return -1;
  }
  timeval tv{};
  tv.tv_sec = timeout.count() / 1000;
  tv.tv_usec = (timeout.count() % 1000) * 1000;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    *error = std::string("connect: ") + std::strerror(errno);
    close(fd);
    return -1;
  }
  return fd;
}

std::string datagram(const std::string& address, uint16_t port, const std::string& payload,
                     std::chrono::milliseconds timeout, std::string* error) {
  int fd = connectTo(address, port, SOCK_DGRAM, timeout, error);
  if (fd < 0) return "";
  std::string reply;
  if (send(fd, payload.data(), payload.size(), 0) < 0) {
    *error = std::string("send: ") + std::strerror(errno);
  } else {
    char buf[65536];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      *error = std::string("recv: ") + std::strerror(errno);
    } else {
      reply.assign(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  return reply;
}

}  // namespace

// ---- FakeInternet ----------------------------------------------------------

std::vector<std::string> FakeInternet::serviceAddresses() {
  return {kHostA4, kHostA6, kHostB4, kHostB6, kHostC4, kMetadata4, kPrivate4, kDns4, kDns6};
}

std::vector<std::string> FakeInternet::routedPrefixes() {
  return {"198.51.100.0/24", "203.0.113.0/24",  "169.254.169.254/32",
          "10.123.0.0/24",   "2001:db8:1::/48", "2001:db8:2::/48"};
}

std::string FakeInternet::hostLinkAddress() const {
  return "198.18." + std::to_string(options_.linkIndex) + ".1";
}
std::string FakeInternet::inetLinkAddress() const {
  return "198.18." + std::to_string(options_.linkIndex) + ".2";
}
std::string FakeInternet::hostLinkAddress6() const {
  return canonical6("2001:db8:ffff:" + hex(options_.linkIndex) + "::1");
}
std::string FakeInternet::inetLinkAddress6() const {
  return canonical6("2001:db8:ffff:" + hex(options_.linkIndex) + "::2");
}
std::string FakeInternet::netnsName() const {
  return "na-" + options_.tag + "-inet";
}
std::string FakeInternet::hostVeth() const {
  return "na" + options_.tag + "h";
}

FakeInternet::FakeInternet(Options options) : options_(std::move(options)) {}

FakeInternet::~FakeInternet() {
  tearDown();
}

std::unique_ptr<FakeInternet> FakeInternet::start(Options options) {
  const auto& tag = options.tag;
  bool tagOk = !tag.empty() && tag.size() <= 10;
  for (char c : tag) tagOk = tagOk && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'));
  if (!tagOk) throw std::invalid_argument("FakeInternet: tag must be 1-10 of [a-z0-9]: " + tag);
  if (options.linkIndex < 0 || options.linkIndex > 255) {
    throw std::invalid_argument("FakeInternet: linkIndex must be 0..255");
  }
  std::unique_ptr<FakeInternet> fi(new FakeInternet(std::move(options)));
  fi->setUp();  // on a throw, ~FakeInternet undoes what was done
  return fi;
}

void FakeInternet::removeLeftovers(const std::string& tag) {
  const std::string ns = "na-" + tag + "-inet";
  if (std::filesystem::exists("/run/netns/" + ns)) {
    auto pids = run({"ip", "netns", "pids", ns});
    std::istringstream in(pids.output);
    std::vector<pid_t> victims;
    for (pid_t pid; in >> pid;) {
      kill(pid, SIGKILL);
      victims.push_back(pid);
    }
    for (pid_t pid : victims) {  // gone, or a zombie left to whoever inherited it
      for (int i = 0; i < 100 && alive(pid); ++i) std::this_thread::sleep_for(20ms);
    }
  }
  run({"ip", "link", "del", "na" + tag + "h"});  // also drops routes through it
  run({"ip", "netns", "del", ns});
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/tmp", ec)) {
    if (entry.path().filename().string().starts_with(ns + "-")) {  // server logs
      std::filesystem::remove_all(entry.path(), ec);
    }
  }
}

void FakeInternet::setUp() {
  removeLeftovers(options_.tag);

  std::string tmpl = "/tmp/na-" + options_.tag + "-inet-XXXXXX";
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("FakeInternet: mkdtemp failed");
  logDir_ = tmpl;

  const std::string ns = netnsName();
  const std::string hostIf = hostVeth();
  const std::string inetIf = "na" + options_.tag + "i";
  auto inNs = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"-n", ns});
    ipOrThrow(args);
  };

  ipOrThrow({"netns", "add", ns});
  netnsCreated_ = true;
  ipOrThrow({"link", "add", hostIf, "type", "veth", "peer", "name", inetIf, "netns", ns});
  linkCreated_ = true;

  ipOrThrow({"addr", "add", hostLinkAddress() + "/30", "dev", hostIf});
  ipOrThrow({"-6", "addr", "add", hostLinkAddress6() + "/64", "dev", hostIf, "nodad"});
  ipOrThrow({"link", "set", hostIf, "up"});

  inNs({"link", "set", "lo", "up"});
  inNs({"addr", "add", inetLinkAddress() + "/30", "dev", inetIf});
  inNs({"-6", "addr", "add", inetLinkAddress6() + "/64", "dev", inetIf, "nodad"});
  inNs({"link", "set", inetIf, "up"});
  for (const auto& a : serviceAddresses()) {
    bool v6 = a.find(':') != std::string::npos;
    if (v6) {
      inNs({"-6", "addr", "add", a + "/128", "dev", "lo", "nodad"});
    } else {
      inNs({"addr", "add", a + "/32", "dev", "lo"});
    }
  }
  inNs({"route", "add", "default", "via", hostLinkAddress(), "dev", inetIf});
  inNs({"-6", "route", "add", "default", "via", hostLinkAddress6(), "dev", inetIf});

  for (const auto& prefix : routedPrefixes()) {
    bool v6 = prefix.find(':') != std::string::npos;
    std::vector<std::string> route{v6 ? "-6" : "-4",
                                   "route",
                                   "add",
                                   prefix,
                                   "via",
                                   v6 ? inetLinkAddress6() : inetLinkAddress(),
                                   "dev",
                                   hostIf};
    ipOrThrow(route);
    route[2] = "del";
    routes_.push_back(route);
  }

  try {
    const int n = static_cast<int>(serviceAddresses().size());
    pid_t servers =
        spawn("servers", {pythonPath(), "-c", kServersPy, join(serviceAddresses(), ","), kDns4});
    waitListening(servers, "servers", "tcp", kHttpPort, n);
    waitListening(servers, "servers", "udp", kEchoPort, n);
    waitListening(servers, "servers", "tcp", kDotPort, 1);

    const std::string ttl = std::to_string(options_.dnsTtlSeconds);
    std::vector<std::string> dnsmasq{"/usr/sbin/dnsmasq",
                                     "--keep-in-foreground",
                                     "--conf-file=/dev/null",
                                     "--no-hosts",
                                     "--no-resolv",
                                     "--leasefile-ro",
                                     "--pid-file=",
                                     "--log-facility=-",
                                     "--log-queries",
                                     "--user=root",
                                     "--group=root",
                                     "--bind-interfaces",
                                     std::string("--listen-address=") + kDns4,
                                     std::string("--listen-address=") + kDns6,
                                     "--port=53",
                                     "--local=/test/",
                                     "--local-ttl=" + ttl};
    auto host = [&](const std::string& name, const std::string& addrs) {
      dnsmasq.push_back("--host-record=" + name + "," + addrs + "," + ttl);
    };
    host("allowed.test", std::string(kHostA4) + "," + kHostA6);
    host("www.example.test", kHostB4);
    host("api.example.test", kHostB4);
    host("other.test", kHostB4);
    host("direct.test", kHostC4);
    host("metadata.test", kMetadata4);
    host("private.test", kPrivate4);
    dnsmasq.push_back("--cname=alias.test,allowed.test," + ttl);
    pid_t dns = spawn("dnsmasq", dnsmasq);
    waitListening(dns, "dnsmasq", "tcp", kDnsPort, 2);
    waitListening(dns, "dnsmasq", "udp", kDnsPort, 2);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string(e.what()) + "\n" + logsTail());
  }
}

void FakeInternet::startIperf() {
  if (iperfStarted_) return;
  pid_t pid = spawn("iperf3", {"iperf3", "-s", "-B", kHostA4, "-p", std::to_string(kIperfPort)});
  iperfStarted_ = true;
  try {
    waitListening(pid, "iperf3", "tcp", kIperfPort, 1);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string(e.what()) + "\n" + logsTail());
  }
}

pid_t FakeInternet::spawn(const std::string& name, const std::vector<std::string>& argv) {
  // Everything the child needs is prepared before fork().
  const std::string logPath = logDir_ + "/" + name + ".log";
  int logFd = open(logPath.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  int nsFd = open(("/run/netns/" + netnsName()).c_str(), O_RDONLY | O_CLOEXEC);
  int nullFd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (logFd < 0 || nsFd < 0 || nullFd < 0) {
    for (int fd : {logFd, nsFd, nullFd}) {
      if (fd >= 0) close(fd);
    }
    throw std::runtime_error("FakeInternet: cannot open log/netns for " + name);
  }
  auto args = cArgv(argv);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    // Dies with the test process even if teardown never runs.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    setpgid(0, 0);
    if (setns(nsFd, CLONE_NEWNET) != 0) _exit(126);
    dup2(nullFd, 0);
    dup2(logFd, 1);
    dup2(logFd, 2);
    execvp(args[0], args.data());
    _exit(127);
  }
  for (int fd : {logFd, nsFd, nullFd}) close(fd);
  if (pid < 0) throw std::runtime_error("FakeInternet: fork failed");
  setpgid(pid, pid);  // also from here, so kill(-pid) works right away
  children_.emplace_back(name, pid);
  return pid;
}

void FakeInternet::waitListening(pid_t pid, const std::string& name, const char* proto,
                                 uint16_t port, int count) {
  const auto deadline = std::chrono::steady_clock::now() + 15s;
  while (countSockets(pid, proto, port) < count) {
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      for (auto& child : children_) {
        if (child.second == pid) child.second = 0;
      }
      throw std::runtime_error("FakeInternet: " + name + " exited (status " +
                               std::to_string(status) + ") before listening");
    }
    if (std::chrono::steady_clock::now() > deadline) {
      throw std::runtime_error("FakeInternet: " + name + " not listening on " + proto + " port " +
                               std::to_string(port) + " after 15 s");
    }
    std::this_thread::sleep_for(20ms);
  }
}

std::string FakeInternet::logsTail() const {
  std::string out;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(logDir_, ec)) {
    std::ifstream in(entry.path());
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.size() > 2000) text = "..." + text.substr(text.size() - 2000);
    out += "--- " + entry.path().filename().string() + " ---\n" + text;
  }
  return out;
}

void FakeInternet::tearDown() {
  for (auto& [name, pid] : children_) {
    if (pid > 0) kill(-pid, SIGTERM);
  }
  const auto deadline = std::chrono::steady_clock::now() + 3s;
  for (auto& [name, pid] : children_) {
    while (pid > 0) {
      if (waitpid(pid, nullptr, WNOHANG) != 0) {
        pid = 0;
      } else if (std::chrono::steady_clock::now() > deadline) {
        kill(-pid, SIGKILL);
        waitpid(pid, nullptr, 0);
        pid = 0;
      } else {
        std::this_thread::sleep_for(10ms);
      }
    }
  }
  children_.clear();
  for (const auto& route : routes_) {
    std::vector<std::string> argv{"ip"};
    argv.insert(argv.end(), route.begin(), route.end());
    run(argv);
  }
  routes_.clear();
  if (netnsCreated_) {
    removeLeftovers(options_.tag);  // strays started with execInNetns, veth, netns
  } else if (linkCreated_) {
    run({"ip", "link", "del", hostVeth()});
  }
  linkCreated_ = netnsCreated_ = false;
  if (!logDir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(logDir_, ec);
    logDir_.clear();
  }
}

FakeInternet::CommandResult FakeInternet::execInNetns(const std::vector<std::string>& argv) const {
  std::vector<std::string> full{"ip", "netns", "exec", netnsName()};
  full.insert(full.end(), argv.begin(), argv.end());
  return run(full);
}

FakeInternet::CommandResult FakeInternet::run(const std::vector<std::string>& argv) {
  CommandResult result;
  int pipeFds[2];
  if (pipe2(pipeFds, O_CLOEXEC) != 0) {
    result.output = std::string("pipe: ") + std::strerror(errno);
    return result;
  }
  int nullFd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  auto args = cArgv(argv);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(nullFd, 0);
    dup2(pipeFds[1], 1);
    dup2(pipeFds[1], 2);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(pipeFds[1]);
  if (nullFd >= 0) close(nullFd);
  if (pid < 0) {
    close(pipeFds[0]);
    result.output = "fork failed";
    return result;
  }
  char buf[4096];
  for (;;) {
    ssize_t n = read(pipeFds[0], buf, sizeof buf);
    if (n > 0) {
      result.output.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  close(pipeFds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) result.exitCode = WEXITSTATUS(status);
  return result;
}

// ---- clients ---------------------------------------------------------------

HttpResponse httpGet(const std::string& address, uint16_t port, const std::string& path,
                     std::chrono::milliseconds timeout) {
  HttpResponse response;
  int fd = connectTo(address, port, SOCK_STREAM, timeout, &response.error);
  if (fd < 0) return response;
  std::string host = address.find(':') != std::string::npos ? "[" + address + "]" : address;
  std::string request =
      "GET " + path + " HTTP/1.0\r\nHost: " + host + "\r\nConnection: close\r\n\r\n";
  std::string raw;
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) < 0) {
    response.error = std::string("send: ") + std::strerror(errno);
  } else {
    char buf[4096];
    for (;;) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n > 0) {
        raw.append(buf, static_cast<size_t>(n));
      } else {
        if (n < 0) response.error = std::string("recv: ") + std::strerror(errno);
        break;
      }
    }
  }
  close(fd);
  auto headerEnd = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/", 0) != 0 || headerEnd == std::string::npos || raw.size() < 12) {
    if (response.error.empty()) response.error = "no HTTP response: " + raw.substr(0, 200);
    return response;
  }
  response.status = std::atoi(raw.c_str() + 9);
  response.body = raw.substr(headerEnd + 4);
  response.error.clear();
  return response;
}

std::string udpExchange(const std::string& address, uint16_t port, const std::string& payload,
                        std::string* error, std::chrono::milliseconds timeout) {
  std::string ignored;
  return datagram(address, port, payload, timeout, error ? error : &ignored);
}

DnsResult dnsQuery(const std::string& server, const std::string& name, uint16_t type, uint16_t port,
                   std::chrono::milliseconds timeout) {
  DnsResult result;
  const uint16_t id =
      static_cast<uint16_t>(getpid() ^ std::chrono::steady_clock::now().time_since_epoch().count());
  // Header: id, flags (RD), QDCOUNT 1, AN/NS/AR 0.
  std::string q;
  auto put16 = [&q](uint16_t v) {
    q += static_cast<char>(v >> 8);
    q += static_cast<char>(v & 0xff);
  };
  for (uint16_t v : {id, uint16_t{0x0100}, uint16_t{1}, uint16_t{0}, uint16_t{0}, uint16_t{0}}) {
    put16(v);
  }
  std::istringstream labels(name);
  for (std::string label; std::getline(labels, label, '.');) {
    if (label.empty() || label.size() > 63) {
      result.error = "bad name " + name;
      return result;
    }
    q += static_cast<char>(label.size());
    q += label;
  }
  q += '\0';
  put16(type);
  put16(1);  // class IN

  const std::string reply = datagram(server, port, q, timeout, &result.error);
  if (!result.error.empty()) return result;

  const auto* m = reinterpret_cast<const unsigned char*>(reply.data());
  const size_t size = reply.size();
  auto u16 = [&](size_t at) { return static_cast<uint16_t>(m[at] << 8 | m[at + 1]); };
  // Reads a possibly compressed name at `off`, advancing `off` past it.
  auto readName = [&](size_t& off, std::string& out) {
    out.clear();
    size_t at = off;
    bool jumped = false;
    for (int hops = 0; hops < 64; ++hops) {
      if (at >= size) return false;
      unsigned len = m[at];
      if ((len & 0xc0) == 0xc0) {
        if (at + 1 >= size) return false;
        if (!jumped) off = at + 2;
        jumped = true;
        at = (len & 0x3f) << 8 | m[at + 1];
      } else if (len == 0) {
        if (!jumped) off = at + 1;
        return true;
      } else {
        if (at + 1 + len > size) return false;
        if (!out.empty()) out += '.';
        out.append(reinterpret_cast<const char*>(m + at + 1), len);
        at += 1 + len;
      }
    }
    return false;
  };

  if (size < 12 || u16(0) != id || !(m[2] & 0x80)) {
    result.error = "malformed or foreign DNS reply";
    return result;
  }
  size_t off = 12;
  std::string scratch;
  for (int i = 0; i < u16(4); ++i) {
    if (!readName(off, scratch) || off + 4 > size) {
      result.error = "truncated question";
      return result;
    }
    off += 4;
  }
  for (int i = 0; i < u16(6); ++i) {
    DnsRecord r;
    if (!readName(off, r.name) || off + 10 > size) {
      result.error = "truncated answer";
      return result;
    }
    r.type = u16(off);
    r.ttl = static_cast<uint32_t>(u16(off + 4)) << 16 | u16(off + 6);
    const size_t rdlen = u16(off + 8);
    off += 10;
    if (off + rdlen > size) {
      result.error = "truncated rdata";
      return result;
    }
    char text[INET6_ADDRSTRLEN];
    if (r.type == 1 && rdlen == 4) {
      r.value = inet_ntop(AF_INET, m + off, text, sizeof text);
    } else if (r.type == 28 && rdlen == 16) {
      r.value = inet_ntop(AF_INET6, m + off, text, sizeof text);
    } else if (r.type == 5) {
      size_t at = off;
      readName(at, r.value);
    } else {
      static const char digits[] = "0123456789abcdef";
      for (size_t k = 0; k < rdlen; ++k) {
        r.value += digits[m[off + k] >> 4];
        r.value += digits[m[off + k] & 0xf];
      }
    }
    off += rdlen;
    result.answers.push_back(std::move(r));
  }
  result.rcode = m[3] & 0x0f;
  return result;
}

}  // namespace nodeagent::testing
