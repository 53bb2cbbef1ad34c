// aedes 1.2 with its Redis persistence: sessions, their queued QoS 1 messages and
// retained messages live in Redis, so they survive a restart of this process.
// Usage: node server.mjs PORT [REDIS_PORT]   (Redis on 127.0.0.1; default 6379)
import { createServer } from 'node:net'
import { Aedes } from 'aedes'
import redisPersistence from 'aedes-persistence-redis'

const port = Number(process.argv[2] || 1883)
const redisPort = Number(process.argv[3] || 6379)

const persistence = redisPersistence({
  host: '127.0.0.1',
  port: redisPort,
  // The default, 1,000, would deliver at most that many of the messages queued
  // for a session when its client comes back; the rest would never arrive.
  maxSessionDelivery: 1000000
})
const broker = await Aedes.createBroker({ persistence })
const server = createServer(broker.handle)

server.listen(port, '127.0.0.1', () => console.log(`aedes listening on 127.0.0.1:${port}`))
server.on('error', (err) => {
  console.error('aedes: ', err.message)
  process.exit(1)
})

function stop () {
  server.close()
  broker.close(() => process.exit(0))
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
