# Runs inside a sandbox: one network attempt per call, one line of result.
#   tcp HOST PORT      -> "ok <http body>" | "err <ERRNO>" | "resolve-failed <code>"
#   udp ADDR PORT MSG  -> "ok <reply>" | "err <ERRNO>"
#   resolve NAME       -> "ok <addr> ..." | "resolve-failed <code>"
#   dns SERVER NAME    -> a raw UDP query to SERVER:53: "ok <bytes>" | "err <ERRNO>"
#   raw                -> "ok" | "err <ERRNO>" (a raw ICMP socket)
#   ping ADDR          -> "ok" | "err <ERRNO>" (an ICMP echo datagram socket)
#   flood ADDR PORT N  -> UDP datagrams of 1000 bytes until refused: "sent <count> <ERRNO|none>"
#   watch HOST PORT F  -> forever: append "<time> <result>" to F every 0.3 s
import errno, socket, struct, sys, time


def err(e):
    return "err " + errno.errorcode.get(e.errno, str(e.errno))


def tcp(host, port, path="/whoami"):
    try:
        infos = socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        return "resolve-failed %s" % e.args[0]
    family, _, _, _, address = infos[0]
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(address)
        s.sendall(b"GET " + path.encode() + b" HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return "ok " + data.split(b"\r\n\r\n", 1)[-1].decode().strip()
    except socket.timeout:
        return "err timeout"
    except OSError as e:
        return err(e)
    finally:
        s.close()


def udp(address, port, message):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(message.encode(), (address, int(port)))
        return "ok " + s.recv(4096).decode().strip()
    except socket.timeout:
        return "err timeout"
    except OSError as e:
        return err(e)


def resolve(name):
    try:
        infos = socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        return "resolve-failed %s" % e.args[0]
    return "ok " + " ".join(sorted(set(i[4][0] for i in infos)))


def dns(server, name):
    query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        query += bytes([len(label)]) + label.encode()
    query += b"\0" + struct.pack(">HH", 1, 1)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(query, (server, 53))
        return "ok %d" % len(s.recv(4096))
    except socket.timeout:
        return "err timeout"
    except OSError as e:
        return err(e)


def raw():
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        return "ok"
    except OSError as e:
        return err(e)


def ping(address):
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        s.settimeout(3)
        s.sendto(struct.pack(">BBHHH", 8, 0, 0, 0, 1) + b"nodeagent", (address, 0))
        s.recv(4096)
        return "ok"
    except socket.timeout:
        return "err timeout"
    except OSError as e:
        return err(e)


def flood(address, port, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"x" * 1000
    sent = 0
    for _ in range(int(count)):
        try:
            s.sendto(payload, (address, int(port)))
            sent += 1
        except OSError as e:
            return "sent %d %s" % (sent, errno.errorcode.get(e.errno, str(e.errno)))
        time.sleep(0.001)
    return "sent %d none" % sent


def watch(host, port, path):
    while True:
        result = tcp(host, port)
        with open(path, "a") as f:
            f.write("%.2f %s\n" % (time.time(), result))
        time.sleep(0.3)


commands = {"tcp": tcp, "udp": udp, "resolve": resolve, "dns": dns, "raw": raw, "ping": ping,
            "flood": flood, "watch": watch}
print(commands[sys.argv[1]](*sys.argv[2:]))
