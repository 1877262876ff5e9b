// The usage ledger through the real agent (needs root): records read with a
// cursor add up to the sandbox's usage, across a pause and a kill -9 of the
// agent, each exactly once and each signed by the node's key; and the
// per-tenant request cap.
#include <fstream>
#include <regex>
#include <thread>

#include <capnp/message.h>
#include <kj/debug.h>
#include <kj/encoding.h>

#include "e2e/agent_harness.h"
#include "loop/io_context.h"
#include "nodeagent/config.h"
#include "nodeagent/ledger_entry.h"
#include "nodeagent/node_key.h"
#include "nodeagent/rpc_endpoint.h"
#include "support/privileged.h"

namespace nodeagent::testing {
namespace {

const char kLedgerConfig[] = ", \"ledger\": {\"intervalSeconds\": 1}";

std::string burn(double seconds) {
  return "import time\nend = time.process_time() + " + std::to_string(seconds) +
         "\nwhile time.process_time() < end: pass\n";
}

// One record as a gateway gets it: the signed bytes, the signature, and what
// they say once verified.
struct Row {
  std::string bytes;
  std::string signature;
  bool verified = false;
  uint64_t seq = 0;
  std::string sandboxId, tenant, nodeId, cause, endReason;
  int64_t start = 0, end = 0;
  uint64_t cpu = 0, running = 0, paused = 0, memory = 0, egress = 0, requests = 0;
  bool final = false;
};

struct Ledger {
  std::string publicKey;
  std::string nodeId;
  std::vector<Row> rows;
};

// Reads the whole ledger from cursor 0, `pageSize` records per call.
Ledger readLedger(AgentProcess& agent, uint32_t pageSize = 3) {
  loop::IoContext io;
  auto conn = connectToNode(io.port, parseListenAddress(agent.target()), nullptr, 8 << 20)
                  .wait(io.waitScope);
  auto node = conn->bootstrap().castAs<api::Node>();
  Ledger ledger;
  auto infoResponse = node.infoRequest().send().wait(io.waitScope);  // owns what info reads
  auto info = infoResponse.getInfo();
  auto key = info.getPublicKey();
  ledger.publicKey.assign(reinterpret_cast<const char*>(key.begin()), key.size());
  ledger.nodeId = info.getNodeId().cStr();
  uint64_t cursor = 0;
  for (;;) {
    auto request = node.usageLedgerRequest();
    request.setAfterSeq(cursor);
    request.setLimit(pageSize);
    auto page = request.send().wait(io.waitScope);
    EXPECT_LE(page.getRecords().size(), pageSize);
    if (page.getRecords().size() == 0) {
      EXPECT_EQ(page.getNextCursor(), cursor);
      break;
    }
    for (auto signedRecord : page.getRecords()) {
      Row row;
      auto bytes = signedRecord.getRecord();
      auto signature = signedRecord.getSignature();
      row.bytes.assign(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
      row.signature.assign(reinterpret_cast<const char*>(signature.begin()), signature.size());
      kj::Own<StoredMessage<api::UsageRecord>> message;
      KJ_IF_MAYBE (good, verifyUsageRecord(key, signedRecord)) {
        message = kj::mv(*good);
        row.verified = true;
      } else {
        message = parseUsageRecord(signedRecord);
      }
      auto r = message->get();
      row.seq = r.getSeq();
      row.sandboxId = r.getSandboxId().cStr();
      row.tenant = r.getTenant().cStr();
      row.nodeId = r.getNodeId().cStr();
      row.cause = r.getCause().cStr();
      row.endReason = r.getEndReason().cStr();
      row.start = r.getPeriodStartNs();
      row.end = r.getPeriodEndNs();
      row.cpu = r.getCpuNs();
      row.running = r.getWallRunningNs();
      row.paused = r.getWallPausedNs();
      row.memory = r.getMemoryByteSeconds();
      row.egress = r.getEgressBytes();
      row.requests = r.getRpcRequests();
      row.final = r.getFinal();
      ledger.rows.push_back(kj::mv(row));
    }
    cursor = page.getNextCursor();
    EXPECT_EQ(cursor, ledger.rows.back().seq);
  }
  return ledger;
}

std::vector<Row> rowsOf(const Ledger& ledger, const std::string& id) {
  std::vector<Row> out;
  for (auto& row : ledger.rows) {
    if (row.sandboxId == id) out.push_back(row);
  }
  return out;
}

bool hasFinal(AgentProcess& agent, const std::string& id) {
  for (auto& row : rowsOf(readLedger(agent, 1000), id)) {
    if (row.final) return true;
  }
  return false;
}

bool verifies(const std::string& publicKey, const std::string& bytes,
              const std::string& signature) {
  capnp::MallocMessageBuilder message;
  auto signedRecord = message.initRoot<api::SignedUsageRecord>();
  signedRecord.setRecord(
      kj::arrayPtr(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size()));
  signedRecord.setSignature(
      kj::arrayPtr(reinterpret_cast<const kj::byte*>(signature.data()), signature.size()));
  auto key = kj::arrayPtr(reinterpret_cast<const kj::byte*>(publicKey.data()), publicKey.size());
  return verifyUsageRecord(key, signedRecord.asReader()) != nullptr;
}

TEST(Ledger, RecordsAddUpAcrossAPauseAndAKill9ExactlyOnceAndSigned) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent({}, true, kLedgerConfig);
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  std::string id = agent.create({"--timeout", "300"});
  ASSERT_FALSE(id.empty());
  auto r = agent.sbx({"exec", id, "--", "python3", "-c", burn(1.0)});
  ASSERT_EQ(r.exitCode, 0) << r.err;
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));

  // A pause: its records show no CPU and the time as paused.
  ASSERT_EQ(agent.sbx({"exec", id, "-d", "--", "sh", "-c", "while :; do :; done"}).exitCode, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_EQ(agent.sbx({"pause", id}).exitCode, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  ASSERT_EQ(agent.sbx({"resume", id}).exitCode, 0);
  ASSERT_EQ(agent.sbx({"exec", id, "--", "pkill", "-f", "while"}).exitCode, 0);

  // Work that runs on while the agent is killed and restarted.
  ASSERT_EQ(agent.sbx({"exec", id, "-d", "--", "python3", "-c", burn(1.5)}).exitCode, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ASSERT_TRUE(waitStored(agent, id, api::SandboxState::RUNNING));
  Ledger before = readLedger(agent);
  agent.killHard();
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  agent.startAgain();
  ASSERT_TRUE(agent.waitReady()) << agent.log();

  // What was read before the crash reads the same again from cursor 0.
  Ledger again = readLedger(agent);
  EXPECT_EQ(again.publicKey, before.publicKey);  // the key survives the restart
  ASSERT_GE(again.rows.size(), before.rows.size());
  for (size_t i = 0; i < before.rows.size(); ++i) {
    EXPECT_EQ(again.rows[i].seq, before.rows[i].seq);
    EXPECT_EQ(again.rows[i].bytes, before.rows[i].bytes);
  }

  for (int i = 0; i < 200; ++i) {  // until the worker has ended
    auto ps = agent.sbx({"ps", id, "--json"}).out;
    if (ps.find("\"running\": true") == std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  uint64_t cgroupCpu = cgroupUsageNs(agent, id);
  ASSERT_EQ(agent.sbx({"kill", id}).exitCode, 0);
  bool ended = false;
  for (int i = 0; i < 200 && !ended; ++i) {
    ended = hasFinal(agent, id);
    if (!ended) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(ended);
  auto usage = agent.sbx({"usage", id, "--json"}).out;

  Ledger ledger = readLedger(agent);
  EXPECT_EQ(ledger.publicKey.size(), NodeKey::kPublicKeyBytes);
  // Every record once, in order, without gaps, each signed by the node.
  for (size_t i = 0; i < ledger.rows.size(); ++i) {
    EXPECT_EQ(ledger.rows[i].seq, i + 1);
    EXPECT_TRUE(ledger.rows[i].verified) << "seq " << ledger.rows[i].seq;
    EXPECT_EQ(ledger.rows[i].nodeId, ledger.nodeId);
  }
  auto rows = rowsOf(ledger, id);
  ASSERT_GE(rows.size(), 6u);
  uint64_t cpu = 0, running = 0, paused = 0, memory = 0, requests = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i > 0) {
      EXPECT_EQ(rows[i].start, rows[i - 1].end) << "gap or overlap at seq " << rows[i].seq;
    }
    EXPECT_EQ(rows[i].final, i + 1 == rows.size());
    EXPECT_EQ(rows[i].tenant, "e2e");
    EXPECT_EQ(rows[i].egress, 0u);  // no network: the default egress source
    cpu += rows[i].cpu;
    running += rows[i].running;
    paused += rows[i].paused;
    memory += rows[i].memory;
    requests += rows[i].requests;
  }
  EXPECT_EQ(rows.back().endReason, "killed");
  EXPECT_EQ(rows.back().cause, "end");

  // The sums are the sandbox's usage: nothing lost, nothing twice.
  uint64_t metered = jsonNumber(usage, "cpuMeteredNs");
  if (metered == 0) metered = jsonNumber(usage, "cpuUserNs") + jsonNumber(usage, "cpuSystemNs");
  EXPECT_EQ(cpu, metered);
  EXPECT_NEAR(double(cpu), double(cgroupCpu), 0.03 * double(cgroupCpu));
  EXPECT_GT(cpu, 2'700'000'000u);  // 1 s + 0.3 s busy loop + 1.5 s, and python starting
  int64_t span = rows.back().end - rows.front().start;
  EXPECT_NEAR(double(running + paused), double(span), 50e6);
  EXPECT_NEAR(double(running), double(jsonNumber(usage, "wallRunningNs")), 50e6);
  EXPECT_EQ(paused, jsonNumber(usage, "wallPausedNs"));
  EXPECT_GT(memory, 0u);
  EXPECT_GE(requests, 6u);  // exec x5 (pkill too), pause, resume, ps..., kill

  // Over the pause: no CPU, the wall time is paused time.
  size_t pauseAt = rows.size(), resumeAt = rows.size();
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].cause == "pause" && pauseAt == rows.size()) pauseAt = i;
    if (rows[i].cause == "resume" && resumeAt == rows.size()) resumeAt = i;
  }
  ASSERT_LT(pauseAt, resumeAt);
  ASSERT_LT(resumeAt, rows.size());
  EXPECT_GE(resumeAt - pauseAt, 2u);  // interval records while paused
  uint64_t pausedCpu = 0, pausedWall = 0, pausedRunning = 0;
  for (size_t i = pauseAt + 1; i <= resumeAt; ++i) {
    pausedCpu += rows[i].cpu;
    pausedWall += rows[i].paused;
    pausedRunning += rows[i].running;
  }
  ASSERT_GE(pauseAt, 1u);
  // The busy loop ran for 300 ms up to the pause (an interval record may split that).
  EXPECT_GT(rows[pauseAt - 1].cpu + rows[pauseAt].cpu, 150'000'000u);
  EXPECT_LT(pausedCpu, 2'000'000u);
  EXPECT_LT(pausedRunning, 5'000'000u);
  EXPECT_GT(pausedWall, 2'400'000'000u);
  EXPECT_LT(pausedWall, 3'500'000'000u);

  // A changed record, or another key, fails verification.
  const Row& sample = rows[pauseAt];
  EXPECT_TRUE(verifies(ledger.publicKey, sample.bytes, sample.signature));
  std::string tampered = sample.bytes;
  tampered[tampered.size() / 2] ^= 0x01;
  EXPECT_FALSE(verifies(ledger.publicKey, tampered, sample.signature));
  auto other = NodeKey::generate();
  std::string otherKey(reinterpret_cast<const char*>(other->publicKey().begin()),
                       other->publicKey().size());
  EXPECT_FALSE(verifies(otherKey, sample.bytes, sample.signature));

  // sbx shows them, verified; pinned to a wrong key it says they fail.
  auto cli = agent.sbx({"usage", "--ledger", "--after", std::to_string(rows.front().seq - 1)});
  EXPECT_EQ(cli.exitCode, 0) << cli.err;
  EXPECT_NE(cli.out.find(id), std::string::npos);
  EXPECT_NE(cli.out.find("verified"), std::string::npos);
  EXPECT_EQ(cli.out.find("FAILED"), std::string::npos);
  auto json = agent.sbx({"usage", "--ledger", "--json", "--limit", "2"});
  EXPECT_EQ(json.exitCode, 0) << json.err;
  EXPECT_NE(json.out.find("\"nextCursor\": \"2\""), std::string::npos) << json.out;
  auto node = agent.sbx({"node"});
  kj::String hex =
      kj::encodeHex(kj::arrayPtr(reinterpret_cast<const kj::byte*>(ledger.publicKey.data()), 32));
  EXPECT_NE(node.out.find(hex.cStr()), std::string::npos) << node.out;
  kj::String wrongHex = kj::encodeHex(other->publicKey());
  auto pinned = agent.sbx({"usage", "--ledger", "--public-key", wrongHex.cStr()});
  EXPECT_EQ(pinned.exitCode, 1);
  EXPECT_NE(pinned.out.find("FAILED"), std::string::npos);
  EXPECT_NE(pinned.err.find("failed signature verification"), std::string::npos);
}

TEST(Ledger, TheTenantRequestCapSpansItsSandboxesAndOutlivesTheAgent) {
  NODEAGENT_REQUIRE_ROOT();
  AgentProcess agent({}, true, kLedgerConfig);
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  ASSERT_EQ(agent.sbx({"tenant-request-cap", "capped", "4"}).exitCode, 0);
  std::string a = agent.create({"--tenant", "capped"});
  std::string b = agent.create({"--tenant", "capped"});
  std::string other = agent.create({"--tenant", "free"});
  for (auto* id : {&a, &a, &b, &b}) {
    auto r = agent.sbx({"exec", *id, "--", "true"});
    ASSERT_EQ(r.exitCode, 0) << r.err;
  }
  for (auto* id : {&a, &b}) {
    auto refused = agent.sbx({"exec", *id, "--", "true"});
    EXPECT_NE(refused.exitCode, 0);
    EXPECT_NE(refused.err.find("limitExceeded"), std::string::npos) << refused.err;
    EXPECT_NE(refused.err.find("tenant capped"), std::string::npos) << refused.err;
  }
  EXPECT_NE(agent.sbx({"cp", "/etc/hostname", b + ":/tmp/x"}).err.find("limitExceeded"),
            std::string::npos);
  for (int i = 0; i < 6; ++i) {  // another tenant is not affected
    auto r = agent.sbx({"exec", other, "--", "true"});
    EXPECT_EQ(r.exitCode, 0) << r.err;
  }
  EXPECT_EQ(agent.sbx({"info", a}).exitCode, 0);
  EXPECT_EQ(agent.sbx({"usage", a}).exitCode, 0);

  // The count comes back from the ledger after a kill -9.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // a record of each
  ASSERT_TRUE(waitStored(agent, b, api::SandboxState::RUNNING));
  agent.killHard();
  agent.startAgain();
  ASSERT_TRUE(agent.waitReady()) << agent.log();
  auto stillRefused = agent.sbx({"exec", b, "--", "true"});
  EXPECT_NE(stillRefused.err.find("limitExceeded"), std::string::npos) << stillRefused.err;

  // A higher cap lets the tenant on; kill always works.
  ASSERT_EQ(agent.sbx({"tenant-request-cap", "capped", "100"}).exitCode, 0);
  auto r = agent.sbx({"exec", b, "--", "true"});
  EXPECT_EQ(r.exitCode, 0) << r.err;
  ASSERT_EQ(agent.sbx({"tenant-request-cap", "capped", "1"}).exitCode, 0);
  EXPECT_NE(agent.sbx({"exec", a, "--", "true"}).err.find("limitExceeded"), std::string::npos);
  EXPECT_EQ(agent.sbx({"kill", a}).exitCode, 0);
  EXPECT_NE(agent.sbx({"info", a, "--json"}).out.find("\"endReason\": \"killed\""),
            std::string::npos);

  // The cap changes are in the audit log.
  auto store = Store::open((agent.dir() + "/state").c_str());
  int audited = 0;
  for (int attempt = 0; attempt < 50 && audited < 3; ++attempt) {
    audited = 0;
    for (auto& stored : store->readAudit(0, 100000)) {
      auto e = stored->get();
      audited += e.getAction() == "set-tenant-request-cap" && e.getTenant() == "capped";
    }
    if (audited < 3) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(audited, 3);
}

}  // namespace
}  // namespace nodeagent::testing
