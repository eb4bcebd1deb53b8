# Wire-format constants of Ethernet, IP and virtio-net, defined once for the whole data plane
# (values from linux/if_ether.h, netinet/in.h and linux/virtio_net.h).

cdef enum:
    ETH_HLEN = 14               # destination MAC, source MAC, ethertype
    VLAN_HLEN = 4               # one 802.1Q/802.1ad tag
    ETH_P_IP = 0x0800
    ETH_P_IPV6 = 0x86DD
    ETH_P_8021Q = 0x8100
    ETH_P_8021AD = 0x88A8
    IPPROTO_HOPOPTS = 0
    IPPROTO_TCP = 6
    IPPROTO_UDP = 17
    IPPROTO_ROUTING = 43
    IPPROTO_FRAGMENT = 44
    IPPROTO_DSTOPTS = 60
    VNET_HDR_LEN = 10           # sizeof(struct virtio_net_hdr)
