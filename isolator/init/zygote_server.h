// nodeagent-init's zygote mode (isolator/zygote.h has the agent's side): serves the
// agent's requests on fd 3, forking one new init per request. Each child becomes the
// sandbox's init through enterSandboxAsInit() and then runs `runInit`, init's own main
// body. Returns (0) when the agent closes the socket; a child never returns.
//
// `modeArgument` is the "zygote" of the zygote's command line: each child blanks it, so
// that its command line reads as an exec'd init's.
#pragma once

namespace nodeagent::isolator::init {

int serveZygote(int (*runInit)(), char* modeArgument);

}  // namespace nodeagent::isolator::init
