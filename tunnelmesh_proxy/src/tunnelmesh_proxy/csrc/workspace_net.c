/*
 * workspace_net.c - LD_PRELOAD shim of tunnelmesh proxy: keeps a workspace on its own loopback IP.
 *
 * Built by `tunnelmesh proxy shim build`; loaded by `tunnelmesh proxy run --workspace NAME -- CMD`.
 *
 * In a workspace, IPv4 bind() to 0.0.0.0 or 127.0.0.1 binds the workspace IP instead, connect()
 * to 127.0.0.1 goes to the workspace IP, and getaddrinfo() of "localhost", "127.0.0.1" or ""
 * answers the workspace IP. So identical servers run on one port in many workspaces, and a
 * client in workspace B cannot reach workspace A's server by 127.0.0.1.
 *
 * Workspace: CMUX_WORKSPACE_INTERNAL (last path component), else the basename of the working
 * directory when it starts with "workspace-". The IP is 127.18.X.Y: trailing digits N give
 * X = (N >> 8) & 255, Y = N & 255; a name without trailing digits (or with more than 32 bits of
 * them) is hashed with 32-bit FNV-1a over its lower-cased bytes, low 16 bits. This matches the
 * proxy's mapping (tunnelmesh_proxy.routing.workspace_ip), except that the proxy refuses digits
 * over 32 bits where the shim hashes.
 *
 * CMUX_PRELOAD_DISABLE=1 turns it off; CMUX_PRELOAD_LOG=1 prints one line per rewrite on stderr.
 * Statically linked programs and raw syscalls (Go) bypass it; IPv6 is left alone.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dlfcn.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *,
                              struct addrinfo **);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static bind_fn real_bind;
static connect_fn real_connect;
static getaddrinfo_fn real_getaddrinfo;
static int active;         /* a workspace was detected */
static int logging;
static struct in_addr ws_ip; /* network byte order */
static char ws_name[256];

static uint32_t workspace_number(const char *name) {
    size_t len = strlen(name), start = len;
    while (start > 0 && isdigit((unsigned char)name[start - 1]))
        start--;
    if (start < len) {
        uint64_t n = 0;
        int overflow = 0;
        for (size_t i = start; i < len; i++) {
            n = n * 10 + (uint64_t)(name[i] - '0');
            if (n > UINT32_MAX) {
                overflow = 1;
                break;
            }
        }
        if (!overflow)
            return (uint32_t)n;
    }
    uint32_t h = 0x811C9DC5u;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint32_t)(unsigned char)tolower((unsigned char)name[i]);
        h *= 0x01000193u;
    }
    return h;
}

static void detect(void) {
    real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    real_connect = (connect_fn)dlsym(RTLD_NEXT, "connect");
    real_getaddrinfo = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    const char *disable = getenv("CMUX_PRELOAD_DISABLE");
    if (disable && disable[0] == '1')
        return;
    const char *log = getenv("CMUX_PRELOAD_LOG");
    logging = log && log[0];

    const char *name = NULL;
    char cwd[PATH_MAX];
    const char *env = getenv("CMUX_WORKSPACE_INTERNAL");
    if (env && env[0]) {
        const char *slash = strrchr(env, '/');
        name = slash ? slash + 1 : env;
    } else if (getcwd(cwd, sizeof cwd)) {
        const char *slash = strrchr(cwd, '/');
        const char *base = slash ? slash + 1 : cwd;
        if (strncmp(base, "workspace-", 10) == 0)
            name = base;
    }
    if (!name || !name[0])
        return;
    snprintf(ws_name, sizeof ws_name, "%s", name);
    uint32_t n = workspace_number(ws_name);
    ws_ip.s_addr = htonl((127u << 24) | (18u << 16) | (((n >> 8) & 255u) << 8) | (n & 255u));
    active = 1;
    if (logging) {
        char text[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &ws_ip, text, sizeof text);
        fprintf(stderr, "workspace_net: workspace %s -> %s\n", ws_name, text);
    }
}

static void note(const char *what, const struct sockaddr_in *sin) {
    if (logging)
        fprintf(stderr, "workspace_net: %s port %u -> workspace %s\n", what,
                (unsigned)ntohs(sin->sin_port), ws_name);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    pthread_once(&once, detect);
    if (active && addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;
        uint32_t a = ntohl(sin->sin_addr.s_addr);
        if (a == INADDR_ANY || a == INADDR_LOOPBACK) {
            struct sockaddr_in copy = *sin;
            copy.sin_addr = ws_ip;
            note("bind", &copy);
            return real_bind(fd, (const struct sockaddr *)&copy, sizeof copy);
        }
    }
    return real_bind(fd, addr, len);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    pthread_once(&once, detect);
    if (active && addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;
        if (ntohl(sin->sin_addr.s_addr) == INADDR_LOOPBACK) {
            struct sockaddr_in copy = *sin;
            copy.sin_addr = ws_ip;
            note("connect", &copy);
            return real_connect(fd, (const struct sockaddr *)&copy, sizeof copy);
        }
    }
    return real_connect(fd, addr, len);
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res) {
    pthread_once(&once, detect);
    if (!active || !node || !(strcmp(node, "localhost") == 0 || strcmp(node, "127.0.0.1") == 0 ||
                              node[0] == '\0'))
        return real_getaddrinfo(node, service, hints, res);
    if (hints && hints->ai_family != AF_UNSPEC && hints->ai_family != AF_INET)
        return real_getaddrinfo(node, service, hints, res);
    /* Let libc build the answer for 127.0.0.1 (service names, socket types, one allocation
     * that freeaddrinfo releases), then put the workspace IP in it. */
    struct addrinfo h;
    if (hints)
        h = *hints;
    else {
        memset(&h, 0, sizeof h);
        h.ai_flags = AI_V4MAPPED | AI_ADDRCONFIG;
    }
    h.ai_family = AF_INET;
    h.ai_flags &= ~AI_ADDRCONFIG;
    int rc = real_getaddrinfo("127.0.0.1", service, &h, res);
    if (rc != 0)
        return rc;
    for (struct addrinfo *ai = *res; ai; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET && ai->ai_addr)
            ((struct sockaddr_in *)ai->ai_addr)->sin_addr = ws_ip;
    }
    if (logging)
        fprintf(stderr, "workspace_net: getaddrinfo %s -> workspace %s\n", node, ws_name);
    return 0;
}
