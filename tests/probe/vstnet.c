/* vstnet: the network probe the firewall tests run inside guests (static, no libc needed in
 * the guest). Every answer is one word on stdout and an exit status:
 *   vstnet listen tcp|udp PORT [IP]   serve until killed: tcp accepts and writes "hello",
 *                                     udp answers every datagram with "hello"
 *   vstnet connect IP PORT [SRC] [MS] tcp connect: open (0), refused (1), timeout (2), error (3)
 *   vstnet udp IP PORT [SRC] [MS]     one datagram: reply (0), refused (1), timeout (2)
 * SRC binds the source address first, with IP_FREEBIND and IP_TRANSPARENT so that a guest can
 * try to send from an address that is not its own (catalogue F8). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int say(const char *word, int code) {
    printf("%s\n", word);
    fflush(stdout);
    return code;
}

static struct sockaddr_in addr_of(const char *ip, int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static int bind_source(int fd, const char *src) {
    int one = 1;
    struct sockaddr_in a = addr_of(src, 0);
    setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof one);
    /* IP_TRANSPARENT (CAP_NET_RAW, which a guest's root keeps) lets the packet really leave
     * with a source that is not the guest's: what the host's anti-spoofing must drop. */
    setsockopt(fd, IPPROTO_IP, IP_TRANSPARENT, &one, sizeof one);
    return bind(fd, (struct sockaddr *)&a, sizeof a);
}

static int listen_on(const char *proto, int port, const char *ip) {
    int udp = !strcmp(proto, "udp");
    int fd = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
    int one = 1;
    struct sockaddr_in a = addr_of(ip, port);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) return say("error-bind", 3);
    if (!udp && listen(fd, 64) < 0) return say("error-listen", 3);
    say("listening", 0);
    for (;;) {
        if (udp) {
            char buf[512];
            struct sockaddr_in peer;
            socklen_t len = sizeof peer;
            if (recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len) >= 0)
                sendto(fd, "hello\n", 6, 0, (struct sockaddr *)&peer, len);
        } else {
            int c = accept(fd, NULL, NULL);
            if (c >= 0) {
                if (write(c, "hello\n", 6) < 0) { /* the peer may be gone already */ }
                close(c);
            }
        }
    }
}

static int connect_to(const char *ip, int port, const char *src, int ms) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = addr_of(ip, port);
    struct pollfd p = {fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;
    if (src && bind_source(fd, src) < 0) return say("error-bind", 3);
    fcntl(fd, F_SETFL, O_NONBLOCK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) return say("open", 0);
    if (errno == ECONNREFUSED) return say("refused", 1);
    if (errno != EINPROGRESS) return say("error", 3);
    if (poll(&p, 1, ms) == 0) return say("timeout", 2);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err == 0) return say("open", 0);
    if (err == ECONNREFUSED) return say("refused", 1);
    if (err == EHOSTUNREACH || err == ENETUNREACH || err == EACCES || err == EPERM)
        return say("refused", 1);
    return say("error", 3);
}

static int udp_to(const char *ip, int port, const char *src, int ms) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = addr_of(ip, port);
    struct pollfd p = {fd, POLLIN, 0};
    char buf[64];
    if (src && bind_source(fd, src) < 0) return say("error-bind", 3);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) return say("error", 3);
    if (send(fd, "ping\n", 5, 0) < 0) return say(errno == ECONNREFUSED ? "refused" : "error", 1);
    if (poll(&p, 1, ms) == 0) return say("timeout", 2);
    if (recv(fd, buf, sizeof buf, 0) < 0) return say(errno == ECONNREFUSED ? "refused" : "error", 1);
    return say("reply", 0);
}

int main(int argc, char **argv) {
    if (argc >= 4 && !strcmp(argv[1], "listen"))
        return listen_on(argv[2], atoi(argv[3]), argc > 4 ? argv[4] : "0.0.0.0");
    if (argc >= 4 && (!strcmp(argv[1], "connect") || !strcmp(argv[1], "udp"))) {
        const char *src = argc > 4 && strcmp(argv[4], "-") ? argv[4] : NULL;
        int ms = argc > 5 ? atoi(argv[5]) : 1500;
        if (!strcmp(argv[1], "connect")) return connect_to(argv[2], atoi(argv[3]), src, ms);
        return udp_to(argv[2], atoi(argv[3]), src, ms);
    }
    fprintf(stderr, "usage: vstnet listen tcp|udp PORT [IP] | connect|udp IP PORT [SRC|-] [MS]\n");
    return 64;
}
