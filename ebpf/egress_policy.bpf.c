// Egress policy for sandboxes, attached once on the cgroup that holds them
// all (the v2 "sandboxes" directory); each sandbox's policy is looked up by
// the cgroup id of the socket's owner.
//
// connect4/6 and sendmsg4/6 decide while the call is made, so a refused
// connect() or sendto() fails at once with EPERM. The packet program is the
// backstop: it sees everything that leaves a sandbox socket (ICMP from ping
// sockets, packets of connections made before a policy change), applies the
// parts of the policy that never depend on when the address was resolved
// (off, always-denied, byte cap) to TCP and UDP and the whole policy to
// anything else, and counts bytes and packets, allowed and denied.
//
// Refusals go to the `events` ring buffer, at most NA_AUDIT_BURST at once and
// NA_AUDIT_PER_SECOND after that per sandbox; the next event says how many
// were dropped. Layouts: egress_policy.h.
#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "egress_policy.h"

char LICENSE[] SEC("license") = "GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define LOOPBACK_IFINDEX 1  // "lo" has ifindex 1 in every network namespace

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 16384);
  __type(key, __u64);
  __type(value, struct na_policy);
} sandbox_policy SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 16384);
  __type(key, __u64);
  __type(value, struct na_counters);
} sandbox_counters SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, 4096);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct na_global_key);
  __type(value, __u8);
} always_rules SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_LPM_TRIE);
  __uint(max_entries, 65536);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, struct na_allow_key);
  __type(value, struct na_allow_rule);
} allow_rules SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 65536);
  __type(key, struct na_resolved_key);
  __type(value, struct na_resolved);
} resolved SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 16384);
  __type(key, __u64);
  __type(value, struct na_audit_budget);
} audit_budget SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline int same_addr(const __u8* a, const __u8* b) {
  __u64 a0, a1, b0, b1;
  __builtin_memcpy(&a0, a, 8);
  __builtin_memcpy(&a1, a + 8, 8);
  __builtin_memcpy(&b0, b, 8);
  __builtin_memcpy(&b1, b + 8, 8);
  return a0 == b0 && a1 == b1;
}

static __always_inline void mapped4(__u8* out, __u32 ip4_be) {
  __builtin_memset(out, 0, 10);
  out[10] = 0xff;
  out[11] = 0xff;
  __builtin_memcpy(out + 12, &ip4_be, 4);
}

static __always_inline void from_ip6(__u8* out, const __u32* words_be) {
  __builtin_memcpy(out, words_be, 16);
}

static __always_inline int is_loopback(const __u8* a) {
  // 127.0.0.0/8 (mapped) or ::1
  int zeros10 = 1;
#pragma unroll
  for (int i = 0; i < 10; i++) zeros10 &= a[i] == 0;
  if (zeros10 && a[10] == 0xff && a[11] == 0xff && a[12] == 127) return 1;
  int v6loop =
      zeros10 && a[10] == 0 && a[11] == 0 && a[12] == 0 && a[13] == 0 && a[14] == 0 && a[15] == 1;
  return v6loop;
}

// NAT64 (64:ff9b::/96) carries an IPv4 address: judged as that address.
static __always_inline void judged_form(__u8* out, const __u8* a) {
  __builtin_memcpy(out, a, 16);
  int nat64 = a[0] == 0x00 && a[1] == 0x64 && a[2] == 0xff && a[3] == 0x9b;
#pragma unroll
  for (int i = 4; i < 12; i++) nat64 &= a[i] == 0;
  if (nat64) {
    __builtin_memset(out, 0, 10);
    out[10] = 0xff;
    out[11] = 0xff;
  }
}

static __always_inline struct na_counters* counters_of(__u64 cgroup) {
  return bpf_map_lookup_elem(&sandbox_counters, &cgroup);
}

static __always_inline int byte_cap_spent(const struct na_policy* policy,
                                          const struct na_counters* counters, __u64 more) {
  if (policy->byte_cap == 0) return 0;
  if (policy->cut_off) return 1;
  return counters && counters->allowed_bytes + more > policy->byte_cap;
}

static __always_inline int always_denied(const __u8* addr) {
  struct na_global_key key = {.prefixlen = 128};
  judged_form(key.addr, addr);
  __u8* verdict = bpf_map_lookup_elem(&always_rules, &key);
  return verdict && *verdict == NA_VERDICT_DENY;
}

static __always_inline int on_allowlist(__u64 cgroup, const __u8* addr, __u16 port) {
  struct na_allow_key key = {
      .prefixlen = 64 + 128,
      .cgroup_hi = (__u32)(cgroup >> 32),
      .cgroup_lo = (__u32)cgroup,
  };
  __builtin_memcpy(key.addr, addr, 16);
  struct na_allow_rule* rule = bpf_map_lookup_elem(&allow_rules, &key);
  if (rule) {
    if (rule->port_count == 0) return 1;
#pragma unroll
    for (int i = 0; i < NA_MAX_PORTS; i++) {
      if (i < rule->port_count && rule->ports[i] == port) return 1;
    }
  }
  struct na_resolved_key rkey = {.cgroup = cgroup};
  __builtin_memcpy(rkey.addr, addr, 16);
  struct na_resolved* by_name = bpf_map_lookup_elem(&resolved, &rkey);
  return by_name && by_name->expires_ns > bpf_ktime_get_boot_ns();
}

// The whole policy for one destination. `full` = 0 leaves out the checks
// that belong to connect time (allowlist, resolvers), for packets of
// connections the call hooks already let through.
static __always_inline int decide(__u64 cgroup, const struct na_policy* policy, const __u8* addr,
                                  __u16 port, __u8 protocol, int full) {
  if (is_loopback(addr)) return NA_DENY_NONE;
  if (!policy) return NA_DENY_NO_POLICY;
  if (same_addr(addr, policy->self4) || same_addr(addr, policy->self6)) return NA_DENY_NONE;
  if (policy->mode == NA_NET_OFF) return NA_DENY_NETWORK_OFF;
  int dns_transport = protocol == IPPROTO_TCP_ || protocol == IPPROTO_UDP_;
  if (dns_transport && bpf_htons(port) == policy->resolver_port &&
      (same_addr(addr, policy->resolver4) || same_addr(addr, policy->resolver6))) {
    return NA_DENY_NONE;
  }
  if (always_denied(addr)) return NA_DENY_ALWAYS_DENIED;
  if (policy->mode == NA_NET_OPEN || !full) return NA_DENY_NONE;
  if (dns_transport && (port == 53 || port == 853)) return NA_DENY_RESOLVER;
  if (on_allowlist(cgroup, addr, port)) return NA_DENY_NONE;
  return NA_DENY_NOT_ALLOWED;
}

static __always_inline void report(__u64 cgroup, const __u8* addr, __u16 port, __u8 protocol,
                                   __u8 hook, int reason) {
  __u64 now = bpf_ktime_get_boot_ns();
  struct na_audit_budget* budget = bpf_map_lookup_elem(&audit_budget, &cgroup);
  if (!budget) {
    struct na_audit_budget fresh = {.refilled_ns = now, .tokens = NA_AUDIT_BURST};
    bpf_map_update_elem(&audit_budget, &cgroup, &fresh, BPF_NOEXIST);
    budget = bpf_map_lookup_elem(&audit_budget, &cgroup);
    if (!budget) return;
  }
  // Refill; races between CPUs only make the limit approximate.
  __u64 earned = (now - budget->refilled_ns) * NA_AUDIT_PER_SECOND / 1000000000ull;
  if (earned > 0) {
    __u64 tokens = budget->tokens + earned;
    budget->tokens = tokens > NA_AUDIT_BURST ? NA_AUDIT_BURST : tokens;
    budget->refilled_ns = now;
  }
  if (budget->tokens == 0) {
    __sync_fetch_and_add(&budget->suppressed, 1);
    return;
  }
  struct na_event* event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
  if (!event) {
    __sync_fetch_and_add(&budget->suppressed, 1);
    return;
  }
  budget->tokens -= 1;
  event->cgroup = cgroup;
  event->time_ns = now;
  __builtin_memcpy(event->addr, addr, 16);
  event->port = port;
  event->protocol = protocol;
  event->hook = hook;
  event->reason = (__u8)reason;
  __builtin_memset(event->pad, 0, sizeof(event->pad));
  event->suppressed = budget->suppressed;
  budget->suppressed = 0;
  bpf_ringbuf_submit(event, 0);
}

// connect(2) and sendmsg(2): 1 lets the call through, 0 fails it with EPERM.
static __always_inline int judge_call(struct bpf_sock_addr* ctx, const __u8* addr, __u8 hook) {
  __u64 cgroup = bpf_get_current_cgroup_id();
  __u16 port = bpf_ntohs((__u16)ctx->user_port);
  __u8 protocol = (__u8)ctx->protocol;
  if (is_loopback(addr)) return 1;
  struct na_policy* policy = bpf_map_lookup_elem(&sandbox_policy, &cgroup);
  int reason = decide(cgroup, policy, addr, port, protocol, 1);
  if (reason == NA_DENY_NONE && policy && byte_cap_spent(policy, counters_of(cgroup), 0)) {
    reason = NA_DENY_BYTE_CAP;
  }
  if (reason == NA_DENY_NONE) return 1;
  struct na_counters* counters = counters_of(cgroup);
  if (counters) __sync_fetch_and_add(&counters->denied_calls, 1);
  report(cgroup, addr, port, protocol, hook, reason);
  return 0;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr* ctx) {
  __u8 addr[16];
  mapped4(addr, ctx->user_ip4);
  return judge_call(ctx, addr, NA_HOOK_CONNECT);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr* ctx) {
  __u32 words[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
  __u8 addr[16];
  from_ip6(addr, words);
  return judge_call(ctx, addr, NA_HOOK_CONNECT);
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr* ctx) {
  __u8 addr[16];
  mapped4(addr, ctx->user_ip4);
  return judge_call(ctx, addr, NA_HOOK_SENDMSG);
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr* ctx) {
  __u32 words[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
  __u8 addr[16];
  from_ip6(addr, words);
  return judge_call(ctx, addr, NA_HOOK_SENDMSG);
}

struct ipv4_start {
  __u8 version_ihl;
  __u8 tos;
  __u16 total_length;
  __u16 id;
  __u16 fragment;
  __u8 ttl;
  __u8 protocol;
  __u16 checksum;
  __u32 source;
  __u32 destination;
};

struct ipv6_start {
  __u32 version_class_flow;
  __u16 payload_length;
  __u8 next_header;
  __u8 hop_limit;
  __u32 source[4];
  __u32 destination[4];
};

// Every packet leaving a sandbox socket: 1 sends it, 0 drops it.
SEC("cgroup_skb/egress")
int egress_packet(struct __sk_buff* skb) {
  if (skb->ifindex == LOOPBACK_IFINDEX) return 1;  // stays inside the sandbox
  __u64 cgroup = bpf_skb_cgroup_id(skb);
  __u8 addr[16];
  __u8 protocol;
  __u32 l4_offset;
  if (skb->protocol == bpf_htons(ETH_P_IP)) {
    struct ipv4_start ip;
    if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) != 0) return 0;
    mapped4(addr, ip.destination);
    protocol = ip.protocol;
    l4_offset = (ip.version_ihl & 0x0f) * 4;
  } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
    struct ipv6_start ip;
    if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) != 0) return 0;
    from_ip6(addr, ip.destination);
    protocol = ip.next_header;  // extension headers: judged as "other"
    l4_offset = sizeof(ip);
  } else {
    return 0;  // not IP: nothing a sandbox socket should send
  }
  __u16 port = 0;
  int call_checked = protocol == IPPROTO_TCP_ || protocol == IPPROTO_UDP_;
  if (call_checked) {
    __u16 ports[2];
    if (bpf_skb_load_bytes(skb, l4_offset, ports, sizeof(ports)) == 0) port = bpf_ntohs(ports[1]);
  }
  struct na_policy* policy = bpf_map_lookup_elem(&sandbox_policy, &cgroup);
  struct na_counters* counters = counters_of(cgroup);
  int reason = decide(cgroup, policy, addr, port, protocol, !call_checked);
  if (reason == NA_DENY_NONE && policy && byte_cap_spent(policy, counters, skb->len)) {
    reason = NA_DENY_BYTE_CAP;
    policy->cut_off = 1;  // cut off for good: no smaller packet slips in later
  }
  if (reason == NA_DENY_NONE) {
    if (counters) {
      __sync_fetch_and_add(&counters->allowed_bytes, skb->len);
      __sync_fetch_and_add(&counters->allowed_packets, 1);
    }
    return 1;
  }
  if (counters) {
    __sync_fetch_and_add(&counters->denied_bytes, skb->len);
    __sync_fetch_and_add(&counters->denied_packets, 1);
  }
  report(cgroup, addr, port, protocol, NA_HOOK_PACKET, reason);
  return 0;
}
