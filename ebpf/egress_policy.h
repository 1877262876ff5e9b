// Layouts shared by egress_policy.bpf.c and its loader (egress_filter.cc):
// the maps' keys and values and the audit event. Plain C, fixed-size fields.
//
// Every address is 16 bytes: IPv6 as is, IPv4 in its IPv4-mapped form
// (::ffff:a.b.c.d). So a rule for 10.0.0.0/8 is the prefix ::ffff:10.0.0.0/104
// and also catches a sandbox that dials ::ffff:10.1.2.3 over IPv6.
#ifndef NODEAGENT_EBPF_EGRESS_POLICY_H_
#define NODEAGENT_EBPF_EGRESS_POLICY_H_

#ifdef __cplusplus
#include <cstdint>
#define NA_U8 uint8_t
#define NA_U16 uint16_t
#define NA_U32 uint32_t
#define NA_U64 uint64_t
#else
#define NA_U8 __u8
#define NA_U16 __u16
#define NA_U32 __u32
#define NA_U64 __u64
#endif

// What a sandbox may reach.
enum na_net_mode {
  NA_NET_OFF = 0,         // loopback only
  NA_NET_RESTRICTED = 1,  // its allowlist, minus the always-denied set
  NA_NET_OPEN = 2,        // everything but the always-denied set
};

// Why a packet or call was refused (the audit event's rule).
enum na_deny_reason {
  NA_DENY_NONE = 0,
  NA_DENY_NETWORK_OFF = 1,
  NA_DENY_ALWAYS_DENIED = 2,  // private, metadata, host, other sandboxes, ...
  NA_DENY_NOT_ALLOWED = 3,    // restricted, and not on the allowlist
  NA_DENY_RESOLVER = 4,       // DNS or DNS over TLS to a server other than the agent
  NA_DENY_BYTE_CAP = 5,       // the sandbox's egress-byte cap is spent
  NA_DENY_NO_POLICY = 6,      // a cgroup the agent has no policy for
};

// Where the decision was taken.
enum na_hook {
  NA_HOOK_CONNECT = 1,  // connect(2), TCP or UDP
  NA_HOOK_SENDMSG = 2,  // sendto/sendmsg with an address, UDP
  NA_HOOK_PACKET = 3,   // the packet backstop: ICMP, raw, anything else
};

// sandbox_policy: cgroup id -> policy.
struct na_policy {
  NA_U8 mode;     // enum na_net_mode
  NA_U8 cut_off;  // set by the programs once the byte cap refused a packet
  NA_U8 pad[6];
  NA_U64 byte_cap;  // egress bytes the sandbox may send; 0 = no cap
  NA_U8 self4[16];  // the sandbox's own addresses (it may reach itself)
  NA_U8 self6[16];
  NA_U8 resolver4[16];  // the agent's DNS server as the sandbox sees it
  NA_U8 resolver6[16];
  NA_U16 resolver_port;  // network byte order
  NA_U8 pad2[6];
};

// sandbox_counters: cgroup id -> what left the sandbox (and what was stopped).
struct na_counters {
  NA_U64 allowed_bytes;
  NA_U64 allowed_packets;
  NA_U64 denied_bytes;
  NA_U64 denied_packets;
  NA_U64 denied_calls;  // connect/sendmsg refused
};

// always_rules (LPM trie): prefix -> verdict. The longest prefix decides, so
// an operator's allowed 10.7.0.0/16 wins over the built-in 10.0.0.0/8.
struct na_global_key {
  NA_U32 prefixlen;
  NA_U8 addr[16];
};
enum na_verdict { NA_VERDICT_DENY = 0, NA_VERDICT_ALLOW = 1 };

// allow_rules (LPM trie): (cgroup id, prefix) -> ports. prefixlen counts the
// 64 bits of the id too, so a lookup only ever matches the sandbox's own rules.
struct na_allow_key {
  NA_U32 prefixlen;
  NA_U32 cgroup_hi;
  NA_U32 cgroup_lo;
  NA_U8 addr[16];
};
#define NA_MAX_PORTS 8
struct na_allow_rule {
  NA_U16 ports[NA_MAX_PORTS];  // host byte order
  NA_U8 port_count;            // 0: every port
  NA_U8 pad[7];
};

// resolved (hash): (cgroup id, address) -> when the permission lapses. Filled
// by the agent's DNS server with the addresses of names the policy allows.
struct na_resolved_key {
  NA_U64 cgroup;
  NA_U8 addr[16];
};
struct na_resolved {
  NA_U64 expires_ns;  // CLOCK_BOOTTIME (bpf_ktime_get_boot_ns)
};

// audit_budget (hash): cgroup id -> token bucket limiting its audit events.
struct na_audit_budget {
  NA_U64 refilled_ns;
  NA_U64 tokens;
  NA_U64 suppressed;  // events dropped since the last one sent
};
#define NA_AUDIT_BURST 20
#define NA_AUDIT_PER_SECOND 10

// One refused call or packet, on the `events` ring buffer.
struct na_event {
  NA_U64 cgroup;
  NA_U64 time_ns;  // CLOCK_BOOTTIME
  NA_U8 addr[16];
  NA_U16 port;     // host byte order; 0 when the protocol has none
  NA_U8 protocol;  // IPPROTO_*
  NA_U8 hook;      // enum na_hook
  NA_U8 reason;    // enum na_deny_reason
  NA_U8 pad[3];
  NA_U64 suppressed;  // events of this sandbox dropped by the rate limit before this one
};

#endif  // NODEAGENT_EBPF_EGRESS_POLICY_H_
