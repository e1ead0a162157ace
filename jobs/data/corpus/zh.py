"""Chinese paragraphs built from templates and word lists written for this project."""

from .base import Paragraph

# (noun, measure word)
PEOPLE = [
    ("老师", "位"), ("学生", "个"), ("工程师", "位"), ("农民", "位"), ("医生", "位"), ("护士", "位"),
    ("画家", "位"), ("面包师", "位"), ("司机", "位"), ("科学家", "位"), ("音乐家", "位"), ("作家", "位"),
    ("图书管理员", "位"), ("园丁", "位"), ("飞行员", "位"), ("厨师", "位"), ("木匠", "位"), ("程序员", "个"),
    ("店主", "位"), ("渔民", "个"), ("旅行者", "个"), ("邻居", "位"), ("孩子", "个"), ("记者", "位"),
    ("建筑师", "位"), ("修理工", "个"), ("摄影师", "位"), ("研究员", "位"), ("市长", "位"), ("奶奶", "位"),
]  # fmt: skip
GROUPS = ["孩子们", "学生们", "工人们", "邻居们", "游客们", "同学们", "老人们", "志愿者们"]
NAMES = [
    ("小明", "他"), ("李华", "他"), ("王芳", "她"), ("张伟", "他"), ("刘洋", "他"), ("陈静", "她"),
    ("赵磊", "他"), ("孙丽", "她"), ("周杰", "他"), ("吴敏", "她"), ("郑浩", "他"), ("林雪", "她"),
    ("黄蕾", "她"), ("马超", "他"), ("何平", "他"), ("高远", "他"), ("许晴", "她"), ("宋佳", "她"),
]  # fmt: skip
PERSON_ADJ = [
    "年轻的", "年老的", "认真的", "热情的", "勤劳的", "安静的", "好奇的", "聪明的", "友好的", "有名的",
    "当地的", "细心的", "忙碌的", "新来的",
]  # fmt: skip

# Verbs are (verb, resultative form used with 把, or None where 把 reads wrong).
CATEGORIES = {
    "food": {
        "objects": [
            ("米饭", "碗"), ("面条", "碗"), ("饺子", "盘"), ("包子", "笼"), ("蛋糕", "块"), ("水果", "些"),
            ("蔬菜", "些"), ("鱼", "条"), ("汤", "碗"), ("月饼", "盒"), ("馒头", "个"), ("苹果", "个"),
            ("西瓜", "个"), ("豆腐", "块"),
        ],
        "verbs": [
            ("做", "做好"), ("吃", "吃完"), ("买", "买回来"), ("准备", "准备好"), ("卖", "卖完"),
            ("带", "带来"), ("尝", None), ("分", "分完"),
        ],
        "adjs": ["很好吃", "很新鲜", "有点儿咸", "特别香", "太甜了", "很便宜"],
    },
    "drinks": {
        "objects": [("茶", "杯"), ("咖啡", "杯"), ("牛奶", "瓶"), ("果汁", "杯"), ("豆浆", "碗"), ("汽水", "瓶")],
        "verbs": [("喝", "喝完"), ("买", "买回来"), ("准备", "准备好"), ("倒", "倒好"), ("点", None)],
        "adjs": ["很香", "太烫了", "很甜", "有点儿苦", "很凉"],
    },
    "docs": {
        "objects": [
            ("信", "封"), ("报告", "份"), ("书", "本"), ("诗", "首"), ("文章", "篇"), ("地图", "张"),
            ("论文", "篇"), ("合同", "份"), ("笔记", "本"), ("说明书", "份"), ("小说", "本"), ("日记", "篇"),
        ],
        "verbs": [
            ("读", "读完"), ("写", "写完"), ("翻译", "翻译好"), ("打印", "打印出来"), ("修改", "改好"),
            ("复印", "复印好"), ("整理", "整理好"), ("寄", "寄出去"),
        ],
        "adjs": ["很有意思", "太长了", "写得很好", "有点儿难", "很重要", "很清楚"],
    },
    "structures": {
        "objects": [
            ("桥", "座"), ("房子", "栋"), ("围墙", "道"), ("花园", "个"), ("图书馆", "座"), ("塔", "座"),
            ("学校", "所"), ("公路", "条"), ("船", "条"), ("博物馆", "座"), ("车站", "个"), ("亭子", "个"),
        ],
        "verbs": [
            ("修", "修好"), ("画", "画完"), ("参观", None), ("打扫", "打扫干净"), ("设计", "设计好"),
            ("拍", "拍下来"), ("建", "建好"),
        ],
        "adjs": ["很漂亮", "很古老", "非常高", "很安静", "特别宽", "有点儿旧"],
    },
    "machines": {
        "objects": [
            ("发动机", "台"), ("电脑", "台"), ("自行车", "辆"), ("打印机", "台"), ("收音机", "台"),
            ("相机", "台"), ("拖拉机", "台"), ("服务器", "台"), ("机器人", "个"), ("水泵", "台"), ("台灯", "盏"),
            ("洗衣机", "台"), ("手机", "部"),
        ],
        "verbs": [
            ("修理", "修好"), ("测试", "测试完"), ("启动", "启动"), ("清洗", "清洗干净"), ("搬", "搬走"),
            ("检查", "检查完"), ("安装", "安装好"), ("调试", "调试好"),
        ],
        "adjs": ["很旧", "很重", "很好用", "有点儿吵", "特别贵", "非常可靠"],
    },
}  # fmt: skip
NUMBERS = ["一", "两", "三", "四", "五", "几", "十"]
PLACES = [
    "在厨房里", "在市场上", "在河边", "在老城区", "在火车站后面", "在山上", "在图书馆里", "在港口",
    "在工厂里", "在湖边", "在一个小村子里", "在大学里", "在火车上", "在花园里", "在实验室里",
    "在办公室里", "在海边", "在市中心",
]  # fmt: skip
TIMES = {
    "past": ["昨天", "上个星期", "今天早上", "三天前", "星期一", "午饭以后", "去年冬天", "昨天晚上", "上个月", "前天"],
    "habit": ["每天早上", "周末", "每天晚上", "经常", "每个星期二", "平时", "下午"],
    "future": ["明天", "下个星期", "星期五", "下个月", "明年春天", "过几天", "后天"],
}  # fmt: skip
MANNERS = ["认真地", "慢慢地", "高兴地", "小心地", "安静地", "很快地", "一起", "耐心地"]
INTRANSITIVE = ["散步", "睡觉", "工作", "休息", "唱歌", "跑步", "游泳", "学习", "等车", "聊天", "跳舞"]
REASONS = [
    "天气很冷", "外面下着大雨", "商店关门了", "路上堵车", "大家都饿了", "明天要考试", "时间不够了",
    "机器坏了", "天气特别好", "客人快到了", "火车晚点了",
]  # fmt: skip
REGIONS = ["北方", "南方", "这个城市", "那个村子", "山上", "海边", "我的家乡", "这里"]
SEASONS = ["春天", "夏天", "秋天", "冬天"]
SEASON_ADJ = ["很冷", "很热", "特别干燥", "比较潮湿", "很舒服", "很漫长", "很短", "非常美"]
PRICED = ["苹果", "鱼", "豆腐", "西瓜", "蔬菜", "米"]
LANGUAGES = ["Python", "C++", "Rust", "Go", "Java", "SQL"]
TECH_OBJECTS = ["程序", "脚本", "工具", "网站", "数据库", "模型"]


class Chinese(Paragraph):
    NAMES = NAMES
    CATEGORIES = CATEGORIES
    TEMPLATES = [
        ("s_past", 5), ("s_habit", 2), ("s_progressive", 1), ("s_future", 2), ("s_ba", 2), ("s_because", 2),
        ("s_said", 1), ("s_question", 1), ("s_number", 1), ("s_describe", 2), ("s_intransitive", 1),
        ("s_shi_de", 1),
    ]  # fmt: skip
    SENTENCES = (3, 8)
    JOINER = ""

    def subject(self):
        r = self.rng.random()
        if r < 0.35:
            if self.mentioned and self.rng.random() < 0.5:
                return self.pronoun
            self.mentioned = True
            return self.name
        if r < 0.5:
            return self.pick(["我", "我们", "他们", "大家", "我妹妹", "我的朋友"] + GROUPS)
        noun, measure = self.pick(PEOPLE)
        adj = self.pick(PERSON_ADJ) if self.rng.random() < 0.4 else ""
        det = self.pick(["那", "这", "一"])
        if det == "一":
            return f"有一{measure}{adj}{noun}"
        return f"{det}{measure}{adj}{noun}"

    def obj(self, data, counted=True):
        noun, measure = self.pick(data["objects"])
        if counted and self.rng.random() < 0.6:
            # 些 is a plural measure: only 一 goes with it.
            number = "一" if measure == "些" else self.pick(NUMBERS)
            return f"{number}{measure}{noun}"
        return noun

    def s_past(self):
        data = self.category_data()
        verb, _ = self.pick(data["verbs"])
        time = self.pick(TIMES["past"])
        place = self.pick(PLACES) if self.rng.random() < 0.6 else ""
        subj = self.subject()
        if self.rng.random() < 0.5:
            return f"{time}，{subj}{place}{verb}了{self.obj(data)}。"
        return f"{subj}{time}{place}{verb}了{self.obj(data)}。"

    def s_habit(self):
        data = self.category_data()
        verb, _ = self.pick(data["verbs"])
        return f"{self.subject()}{self.pick(TIMES['habit'])}{self.pick(PLACES)}{verb}{self.obj(data, False)}。"

    def s_progressive(self):
        data = self.category_data()
        verb, _ = self.pick(data["verbs"])
        return f"{self.subject()}正在{self.pick(PLACES)}{verb}{self.obj(data)}。"

    def s_future(self):
        data = self.category_data()
        verb, _ = self.pick(data["verbs"])
        subj = self.subject()
        if self.rng.random() < 0.5:
            return f"{subj}{self.pick(TIMES['future'])}要{verb}{self.obj(data)}。"
        return f"{subj}打算{self.pick(TIMES['future'])}{self.pick(PLACES)}{verb}{self.obj(data, False)}。"

    def s_ba(self):
        data = self.category_data()
        verbs = [v for v in data["verbs"] if v[1]]
        _, result = self.pick(verbs)
        noun, measure = self.pick(data["objects"])
        det = self.pick(["那", "这"])
        return f"{self.subject()}{self.pick(TIMES['past'])}把{det}{measure}{noun}{result}了。"

    def s_because(self):
        data = self.category_data()
        verb, _ = self.pick(data["verbs"])
        clause = f"{self.subject()}{self.pick(PLACES)}{verb}了{self.obj(data)}"
        r = self.rng.random()
        if r < 0.5:
            return f"因为{self.pick(REASONS)}，所以{clause}。"
        if r < 0.8:
            verb2, _ = self.pick(data["verbs"])
            return f"虽然{self.pick(REASONS)}，但是{self.subject()}还是{verb2}了{self.obj(data)}。"
        return f"如果{self.pick(REASONS)}，{self.subject()}就不{verb}{self.obj(data, False)}了。"

    def s_said(self):
        name = self.pick(NAMES)[0]
        inner = self.pick([self.s_past, self.s_future, self.s_habit])()
        verb = self.pick(["说", "告诉我们", "笑着说", "回答说", "小声说"])
        return f"{name}{verb}：“{inner}”"

    def s_question(self):
        data = self.category_data()
        verb, _ = self.pick(data["verbs"])
        r = self.rng.random()
        if r < 0.3:
            return f"{self.subject()}{self.pick(TIMES['past'])}{verb}了{self.obj(data)}吗？"
        if r < 0.55:
            return f"谁{self.pick(PLACES)}{verb}了{self.obj(data)}？"
        if r < 0.8:
            return f"{self.subject()}为什么要{self.pick(PLACES)}{verb}{self.obj(data, False)}？"
        return f"你{self.pick(TIMES['future'])}打算{verb}什么？"

    def s_number(self):
        r = self.rng.random()
        if r < 0.2:
            noun = self.pick(["桥", "塔", "图书馆", "博物馆"])
            return f"这座{noun}有{self.rng.randint(3, 480)}米{self.pick(['高', '长', '宽'])}。"
        if r < 0.4:
            return f"{self.rng.randint(1850, 2024)}年，这个城市有{self.rng.randint(2, 900)}万人口。"
        if r < 0.55:
            return f"市场上一斤{self.pick(PRICED)}卖{self.rng.randint(2, 40)}块{self.rng.randint(1, 9)}。"
        if r < 0.7:
            data = self.category_data()
            verb, _ = self.pick(data["verbs"])
            n = self.rng.randint(2, 14)
            return f"{self.subject()}花了{n}个小时{verb}{self.obj(data, False)}。"
        if r < 0.85:
            group = self.pick(GROUPS)
            return f"大约百分之{self.rng.randint(5, 95)}的{group}{self.pick(TIMES['habit'])}{self.pick(INTRANSITIVE)}。"
        lang = self.pick(LANGUAGES)
        return (
            f"我们用 {lang} 写了一个{self.pick(TECH_OBJECTS)}，"
            f"每天处理 {self.rng.randint(100, 90000)} 条数据，只需要 {self.rng.randint(2, 59)} 秒。"
        )

    def s_describe(self):
        r = self.rng.random()
        if r < 0.35:
            return f"{self.pick(REGIONS)}的{self.pick(SEASONS)}{self.pick(SEASON_ADJ)}。"
        data = self.category_data()
        noun, measure = self.pick(data["objects"])
        if r < 0.7:
            return f"{self.subject()}觉得这{measure}{noun}{self.pick(data['adjs'])}。"
        number = "一" if measure == "些" else self.pick(NUMBERS)
        return f"{self.pick(PLACES)[1:]}有{number}{measure}{noun}，{self.pick(data['adjs'])}。"

    def s_intransitive(self):
        subj = self.subject()
        place = self.pick(PLACES)
        if self.rng.random() < 0.5:
            return f"{subj}{self.pick(TIMES['habit'])}{place}{self.pick(INTRANSITIVE)}。"
        return f"{subj}{self.pick(TIMES['past'])}{self.pick(MANNERS)}{place}{self.pick(INTRANSITIVE)}。"

    def s_shi_de(self):
        data = self.category_data()
        verb, _ = self.pick(data["verbs"])
        noun, _ = self.pick(data["objects"])
        return f"这些{noun}是{self.subject()}{self.pick(TIMES['past'])}{self.pick(PLACES)}{verb}的。"


paragraph = Chinese.generate
